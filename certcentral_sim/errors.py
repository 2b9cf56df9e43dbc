"""The simulator's error tree and the CertCentral error codes it answers with.

An `ApiError` is what the HTTP layer turns into `{"errors":[{"code","message"}]}` with its `status`
(reference §3). The codes come from the reference where it names one; the few it does not name are marked
"simulator's choice" next to their factory.
"""

from __future__ import annotations

__all__ = ["ApiError", "ConfigError", "SimError"]


class SimError(Exception):
    """Root of every error the simulator raises on purpose."""


class ConfigError(SimError):
    """Bad simulator configuration (names the offending key)."""


class ApiError(SimError):
    """A CertCentral API error: HTTP status plus one `code`/`message` pair."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    # --- documented codes (reference §3) ---
    @classmethod
    def bad_request_format(cls, message: str = "The request body is not valid JSON.") -> ApiError:
        return cls(400, "bad_request_format", message)

    @classmethod
    def invalid_value(cls, field: str, message: str | None = None) -> ApiError:
        return cls(400, f"invalid_value:{field}", message or f"Invalid value for {field}.")

    @classmethod
    def not_found(cls, what: str) -> ApiError:
        return cls(404, f"not_found|{what}", f"The requested {what} was not found.")

    @classmethod
    def unauthorized(cls) -> ApiError:
        # Status and code for a bad/absent key are unconfirmed (reference §3): 401, same body shape.
        return cls(401, "invalid_api_key", "The API key is missing or invalid.")

    @classmethod
    def forbidden(cls) -> ApiError:
        return cls(403, "access_denied|missing_permission", "The API key lacks permission for this action.")

    @classmethod
    def rate_limited(cls) -> ApiError:
        return cls(429, "request_limit_exceeded", "Service unavailable, please limit request volume")

    @classmethod
    def server_error(cls, status: int = 500) -> ApiError:
        return cls(status, "internal_error", "An unexpected error occurred.")  # simulator's choice of code
