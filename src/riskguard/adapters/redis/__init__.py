"""Redis adapters: the shared feature state store (:mod:`riskguard.adapters.redis.state`)."""
