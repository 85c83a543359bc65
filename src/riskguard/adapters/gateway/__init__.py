"""The zero-trust gateway's adapters: who is calling (:mod:`.jwt`, :mod:`.jwks`) and how often
(:mod:`.ratelimit`), configured by :mod:`.settings`. See docs/gateway.md."""
