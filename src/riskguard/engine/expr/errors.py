"""The one exception raised for every syntax or type problem in an expression."""

from __future__ import annotations


class ExprError(Exception):
    """A syntax or type error located at a 0-based character offset of the expression source.

    ``message`` says what is wrong and ``expected`` what would have been right ("" when there is
    nothing useful to suggest).
    """

    position: int
    message: str
    expected: str

    def __init__(self, position: int, message: str, expected: str = "") -> None:
        # Passing every field to Exception keeps the error picklable (it is rebuilt from args).
        super().__init__(position, message, expected)
        self.position = position
        self.message = message
        self.expected = expected

    def __str__(self) -> str:
        text = f"at position {self.position}: {self.message}"
        return f"{text} (expected {self.expected})" if self.expected else text
