"""Converting gRPC failures into the SDK's typed exceptions."""

from __future__ import annotations

import grpc
import pytest

from deinfer import errors


class FakeCall(grpc.RpcError):
    """What a failed call raises: an RpcError that is also a grpc.Call (code, details)."""

    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c != grpc.StatusCode.OK])
def test_every_status_has_its_own_class(code: grpc.StatusCode) -> None:
    err = errors.from_rpc_error(FakeCall(code, "what went wrong"))
    assert type(err) is errors.BY_CODE[code]
    assert err.code == code
    assert err.message == "what went wrong"
    assert str(err) == f"{code.name}: what went wrong"
    assert isinstance(err, errors.DeinferError)


def test_names_match_the_brief() -> None:
    pairs = {
        errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
        errors.NotFound: grpc.StatusCode.NOT_FOUND,
        errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
        errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
        errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
        errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
        errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
        errors.Internal: grpc.StatusCode.INTERNAL,
        errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    }
    for cls, code in pairs.items():
        assert cls("x").code == code


def test_cause_is_kept_and_empty_details_fall_back() -> None:
    call = FakeCall(grpc.StatusCode.UNAVAILABLE, "")
    err = errors.from_rpc_error(call)
    assert isinstance(err, errors.Unavailable)
    assert err.__cause__ is call
    assert err.message  # never empty: something to print


def test_bare_rpc_error_is_unknown() -> None:
    err = errors.from_rpc_error(grpc.RpcError("boom"))
    assert isinstance(err, errors.Unknown)
    assert err.code == grpc.StatusCode.UNKNOWN
    assert err.message == "boom"


def test_error_for_builds_the_matching_class() -> None:
    err = errors.error_for(grpc.StatusCode.NOT_FOUND, "no model 'x'")
    assert isinstance(err, errors.NotFound)
    with pytest.raises(errors.DeinferError, match="NOT_FOUND: no model 'x'"):
        raise err
