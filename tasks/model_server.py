"""The HTTP server `paperops serve` runs: a registered paper model (the MLflow pyfunc of mlflow/paper_model.py, loaded
pickle-free) behind the limits a server facing untrusted clients needs. MLflow's own scoring server
(`mlflow models serve`, 3.17) reads a body of any size whole, quotes the request in its error messages, answers
NaN (invalid JSON) with 200 and turns deeply nested JSON into a 500; this one takes its `inputs` requests and

- refuses a body over `max_request_bytes` with 413 (a declared Content-Length before reading it, a chunked body
  as soon as it passes the limit);
- accepts `{"inputs": <batch>, "params": {...}}` only when it fits the logged signature: a tensor of the
  signature's rank, fixed dimensions and dtype holding finite numbers, or a list of strings; params the signature
  declares, of their types. Anything else, malformed JSON included, is a 4xx whose short message describes what
  was expected and never quotes the request;
- answers 422 instead of a prediction that is not finite (a valid but extreme input can overflow a model), so a
  200 is always strict JSON;
- answers 503 once the alias it was started for points at another version, no longer exists, or cannot be
  confirmed (checked at most every few seconds): it never keeps answering for an alias that has moved.

GET /ping and /health answer 200 (the model is loaded before the server listens); GET /version names the served
version. Started by uvicorn (`serve_command` in tasks/serve.py) with the model and the limit in the environment.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

import mlflow
import numpy as np
from fastapi import FastAPI, Request, Response
from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature

from tasks.refs import ServedModel

DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
SERVED_MODEL_ENV = "PAPEROPS_SERVED_MODEL"  # JSON of the ServedModel
MAX_REQUEST_BYTES_ENV = "PAPEROPS_SERVE_MAX_REQUEST_BYTES"
ALIAS_CHECK_SECONDS = 2.0
MESSAGE_CHARS = 200  # a model's own refusal is cut to this: an error answer stays short whatever the model says

logger = logging.getLogger(__name__)


class RequestRejected(Exception):
    """A request the server refuses: the HTTP status and a message that describes the expected input, never the
    request itself."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# MLflow DataType names of params -> the JSON types a request may give them (bool is no number here).
_PARAM_TYPES: dict[str, tuple[type, ...]] = {"boolean": (bool,), "integer": (int,), "long": (int,),
                                             "float": (int, float), "double": (int, float), "string": (str,)}


@dataclass(frozen=True)
class InputSpec:
    """What /invocations accepts, read from the logged signature: a tensor (`dtype`, `shape` with -1 for a free
    dimension, the first being the batch) or a batch of strings, and the params a request may set (name -> MLflow
    DataType name)."""

    kind: Literal["tensor", "strings"]
    dtype: np.dtype | None = None
    shape: tuple[int, ...] = (-1,)
    params: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_signature(cls, signature: ModelSignature | None) -> InputSpec:
        if signature is None or signature.inputs is None:
            raise ValueError("the model has no logged signature: paperops serve validates requests against it")
        inputs = signature.inputs.inputs
        params = {p.name: p.dtype.name for p in signature.params.params} if signature.params else {}
        if len(inputs) != 1 or getattr(inputs[0], "name", None):
            raise ValueError(f"paperops serve serves one unnamed input (a tensor or a column of strings); the "
                             f"signature has {signature.inputs}")
        if signature.inputs.is_tensor_spec():
            return cls("tensor", np.dtype(inputs[0].type), tuple(inputs[0].shape), params)
        if inputs[0].type.name == "string":
            return cls("strings", None, (-1,), params)
        raise ValueError(f"paperops serve serves tensors or strings; the signature has {signature.inputs}")

    def describe(self) -> str:
        if self.kind == "strings":
            return "a non-empty list of strings"
        dims = ", ".join("n" if i == 0 and d == -1 else ("any" if d == -1 else str(d)) for i, d in enumerate(self.shape))
        return f"a ({dims}) array of finite {self.dtype} numbers as nested lists"


@dataclass(frozen=True)
class ParsedRequest:
    inputs: np.ndarray
    params: dict[str, Any]


def _refuse_constant(name: str) -> Any:
    raise RequestRejected(400, "NaN and Infinity are not numbers a request may hold")


def parse_request(body: bytes, spec: InputSpec) -> ParsedRequest:
    """The inputs (as the signature's dtype) and params of a JSON request body, or RequestRejected (4xx)."""
    try:
        payload = json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise RequestRejected(400, "the body nests JSON too deeply") from None
    except json.JSONDecodeError as exc:
        raise RequestRejected(400, f"the body is not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    except (UnicodeDecodeError, ValueError):  # not UTF-8; an integer with thousands of digits
        raise RequestRejected(400, "the body is not valid UTF-8 JSON") from None
    expected = f'a JSON object {{"inputs": {spec.describe()}, "params": {{...}} (optional)}}'
    if not isinstance(payload, dict) or "inputs" not in payload or set(payload) - {"inputs", "params"}:
        raise RequestRejected(400, f"a request is {expected}")
    inputs = _strings(payload["inputs"], spec) if spec.kind == "strings" else _tensor(payload["inputs"], spec)
    return ParsedRequest(inputs, _params(payload.get("params", {}), spec))


def _tensor(value: Any, spec: InputSpec) -> np.ndarray:
    assert spec.dtype is not None
    expected = f"inputs must be {spec.describe()}"
    if not isinstance(value, list):
        raise RequestRejected(400, expected)
    try:
        array = np.array(value)
    except (ValueError, TypeError, OverflowError, RecursionError):  # ragged, or too deep for numpy
        raise RequestRejected(400, f"{expected}: the lists are not rectangular") from None
    if array.dtype.kind not in "iuf":  # strings, booleans, objects, nulls
        raise RequestRejected(400, f"{expected}: it holds something other than numbers")
    if array.ndim != len(spec.shape):
        raise RequestRejected(400, f"{expected}: it has {array.ndim} dimensions, not {len(spec.shape)}")
    if array.size == 0:
        raise RequestRejected(400, f"{expected}: it is empty")
    if any(want not in (-1, got) for want, got in zip(spec.shape, array.shape)):
        raise RequestRejected(400, f"{expected}: its shape is {array.shape}")
    if spec.dtype.kind == "f":
        if not np.isfinite(array).all():  # 1e999 parses to inf
            raise RequestRejected(400, f"{expected}: it holds a number too large for a float")
        if np.abs(array).max() > np.finfo(spec.dtype).max:
            raise RequestRejected(400, f"{expected}: it holds a number beyond the {spec.dtype} range")
    elif spec.dtype.kind in "iu":
        limits = np.iinfo(spec.dtype)
        if array.dtype.kind == "f" or array.min() < limits.min or array.max() > limits.max:
            raise RequestRejected(400, f"{expected}: it holds numbers that are not {spec.dtype} integers")
    return array.astype(spec.dtype)


def _strings(value: Any, spec: InputSpec) -> np.ndarray:
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise RequestRejected(400, f"inputs must be {spec.describe()}")
    try:
        for item in value:
            item.encode()
    except UnicodeEncodeError:  # a "\ud800" escape decodes to a lone surrogate, which no tokenizer takes
        raise RequestRejected(400, f"inputs must be {spec.describe()}: one holds a lone surrogate") from None
    return np.array(value, dtype=str)


def _params(value: Any, spec: InputSpec) -> dict[str, Any]:
    allowed = ", ".join(f"{name} ({kind})" for name, kind in spec.params.items()) or "none"
    if not isinstance(value, dict) or set(value) - set(spec.params):
        raise RequestRejected(400, f"params must be a JSON object of the model's params: {allowed}")
    for name, item in value.items():
        types = _PARAM_TYPES.get(spec.params[name], (object,))
        if isinstance(item, bool) and bool not in types or not isinstance(item, types) \
                or isinstance(item, float) and not math.isfinite(item):
            raise RequestRejected(400, f"params.{name} must be a {spec.params[name]}")
    return value


def predictions_json(prediction: Any) -> bytes:
    """{"predictions": ...} as strict JSON; RequestRejected (422) when the model answered NaN or infinity."""
    if hasattr(prediction, "to_dict"):  # a DataFrame
        prediction = prediction.to_dict(orient="records")
    elif isinstance(prediction, np.ndarray):
        prediction = prediction.tolist()
    try:
        return json.dumps({"predictions": prediction}, allow_nan=False,
                          default=lambda o: o.item() if isinstance(o, np.generic) else str(o)).encode()
    except ValueError:
        raise RequestRejected(422, "the model's answer to this input is not finite (NaN or infinity): the input is "
                                   "valid but outside what the model handles") from None


# ------------------------------------------------------------------------------------------------- the server


def _error(status: int, message: str) -> Response:
    return Response(json.dumps({"error_code": status, "message": message}), status, media_type="application/json")


async def _read_body(request: Request, limit: int) -> bytes:
    too_large = RequestRejected(413, f"the request body exceeds the server's limit of {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


class AliasWatch:
    """Whether the alias the server was started for still points at its version (asked at most every few
    seconds)."""

    def __init__(self, served: ServedModel) -> None:
        self.served = served
        self.checked_at = -math.inf

    def refusal(self) -> str | None:
        """None while the alias names the served version; else why requests are refused."""
        if time.monotonic() - self.checked_at < ALIAS_CHECK_SECONDS:
            return None
        name, alias, version = self.served.model_name, self.served.alias, self.served.version
        try:
            current = str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return f"{name}@{alias} no longer exists: this server (v{version}) answers no more requests"
        except Exception:  # the registry cannot be reached: the alias cannot be confirmed
            logger.exception("checking %s@%s", name, alias)
            return f"the registry cannot confirm that {name}@{alias} still names v{version}; try again later"
        if current != version:
            return (f"{name}@{alias} moved from v{version} to v{current} after this server started: restart "
                    f"`paperops serve` to serve v{current}")
        self.checked_at = time.monotonic()
        return None


def create_app(model: Any, served: ServedModel, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> FastAPI:
    """The server of a loaded pyfunc `model`, the registered version `served`."""
    spec = InputSpec.from_signature(model.metadata.signature)
    alias = AliasWatch(served)
    timeout = MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get()
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/ping")
    @app.get("/health")
    async def ping() -> Response:
        return Response("\n", media_type="application/json")

    @app.get("/version")
    async def version() -> Response:
        return Response(json.dumps({"model": served.model_name, "version": served.version, "alias": served.alias}),
                        media_type="application/json")

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        try:
            media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type != "application/json":
                raise RequestRejected(415, "send the request as Content-Type: application/json")
            parsed = parse_request(await _read_body(request, max_request_bytes), spec)
            refusal = await asyncio.to_thread(alias.refusal)
            if refusal is not None:
                return _error(503, refusal)
            prediction = await asyncio.wait_for(asyncio.to_thread(model.predict, parsed.inputs,
                                                                  parsed.params or None), timeout)
            return Response(predictions_json(prediction), media_type="application/json")
        except RequestRejected as exc:
            return _error(exc.status, exc.message)
        except MlflowException:  # its messages quote the input
            return _error(400, f"the inputs do not fit the model's signature: expected {spec.describe()}")
        except ValueError as exc:  # the recipe's own refusal (e.g. a param out of range); may quote a value, so cut
            return _error(400, f"the model refused this input: {str(exc)[:MESSAGE_CHARS]}")
        except TimeoutError:
            return _error(504, f"the prediction took longer than {timeout} s")
        except Exception:
            logger.exception("the model failed on a request")
            return _error(500, "the model failed on this request; the server log has the traceback")

    return app


def app_from_environment() -> FastAPI:
    """The uvicorn factory: the model named by PAPEROPS_SERVED_MODEL, loaded pickle-free from the registry in
    MLFLOW_TRACKING_URI, with the body limit in PAPEROPS_SERVE_MAX_REQUEST_BYTES."""
    served = ServedModel(**json.loads(os.environ[SERVED_MODEL_ENV]))
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    model = mlflow.pyfunc.load_model(served.model_uri)
    return create_app(model, served, int(os.environ.get(MAX_REQUEST_BYTES_ENV, DEFAULT_MAX_REQUEST_BYTES)))
