"""TorchServe's handler context, as the handler worker passes it (standard library only)."""

from __future__ import annotations


class _Metrics:
    """TorchServe's context.metrics: handlers may call add_time, add_counter, ...; the calls
    are accepted and ignored (the evaluator measures throughput, latency and memory itself)."""

    def __getattr__(self, name: str):
        def record(*args, **kwargs):
            return None

        return record


class RequestProcessor:
    """TorchServe's per-request header holder."""

    def __init__(self, headers: dict | None = None) -> None:
        self._headers = dict(headers or {})
        self._status_code = 200
        self._reason_phrase = None
        self._response_header: dict = {}

    def get_request_property(self, key):
        return self._headers.get(key)

    def get_request_properties(self):
        return self._headers

    def add_response_property(self, key, value):
        self._response_header[key] = value

    def get_response_header(self, key):
        return self._response_header.get(key)

    def get_response_headers(self):
        return self._response_header

    def report_status(self, code, reason=None):
        self._status_code = code
        self._reason_phrase = reason

    def get_response_status_code(self):
        return self._status_code


class Context:
    """What TorchServe passes a handler: system properties, manifest, request headers."""

    def __init__(self, *, model_name, model_dir, manifest, batch_size, gpu, server_name):
        self.model_name = model_name
        self.manifest = manifest
        self._system_properties = {
            "model_dir": model_dir,
            "gpu_id": gpu,
            "batch_size": batch_size,
            "server_name": server_name,
            "server_version": "weighbridge",
            "limit_max_image_pixels": True,
        }
        self.start_batch(0, 0)
        self.metrics = _Metrics()
        self.model_yaml_config: dict = {}
        self.stopping_criteria = None
        self.cl_socket = None

    @property
    def system_properties(self):
        return self._system_properties

    def start_batch(self, size: int, batch_id: int) -> None:
        # Per-request state is made on first use: most handlers never touch it.
        self._size, self._batch_id = size, batch_id
        self._request_ids: dict | None = None
        self._request_processor: list[RequestProcessor] | None = None

    @property
    def request_ids(self) -> dict:
        if self._request_ids is None:
            self._request_ids = {i: f"{self._batch_id}-{i}" for i in range(self._size)}
        return self._request_ids

    @request_ids.setter
    def request_ids(self, value: dict) -> None:
        self._request_ids = value

    @property
    def request_processor(self) -> list[RequestProcessor]:
        if self._request_processor is None:
            self._request_processor = [RequestProcessor() for _ in range(self._size)]
        return self._request_processor

    @request_processor.setter
    def request_processor(self, value: list[RequestProcessor]) -> None:
        self._request_processor = value

    def get_request_id(self, idx=0):
        return self.request_ids.get(idx)

    def get_request_header(self, idx, key):
        if idx >= len(self.request_processor):
            return None
        return self.request_processor[idx].get_request_property(key)

    def get_all_request_header(self, idx):
        if idx >= len(self.request_processor):
            return {}
        return self.request_processor[idx].get_request_properties()

    def set_response_content_type(self, idx, value):
        self.set_response_header(idx, "content-type", value)

    def get_response_content_type(self, idx):
        return self.get_response_headers(idx).get("content-type")

    def get_response_status(self, idx):
        return self.request_processor[idx].get_response_status_code()

    def set_response_status(self, code=200, phrase="", idx=0):
        if idx < len(self.request_processor):
            self.request_processor[idx].report_status(code, phrase)

    def set_all_response_status(self, code=200, phrase=""):
        for processor in self.request_processor:
            processor.report_status(code, phrase)

    def get_response_headers(self, idx):
        return self.request_processor[idx].get_response_headers()

    def set_response_header(self, idx, key, value):
        self.request_processor[idx].add_response_property(key, value)

    def get_sequence_id(self, idx):
        return None
