"""A small ComfyUI client: start a local server, send it an API-format prompt, follow it, fetch its files.

The same HTTP and websocket interface the ComfyUI frontend and other clients use, nothing internal:

* ``LocalServer``: ``python main.py --cpu --listen 127.0.0.1 --port <free>`` as a subprocess (a context
  manager), with a scratch ``--base-directory`` whose ``custom_nodes/`` links to this pack, a database
  there too when the host has ``--database-url``, stopped and its scratch folder removed on exit, also on
  Ctrl-C or an error. Loopback only.
* ``ComfyClient``: ``/object_info`` (``missing_nodes``), ``/upload/image``, ``/prompt`` with a
  ``client_id``, the websocket ``/ws?clientId=`` (``progress``, ``executing``, ``executed``,
  ``execution_error``, ``execution_interrupted``, ``execution_success``), ``/history/<id>`` and ``/view``.

Standard library plus ``websocket-client`` (``pip install websocket-client``; the host venvs of
scripts/setup_hosts.sh have it). Nothing here imports the host.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "ledits_pp"  # the pack's folder name in the scratch custom_nodes/
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 180
log = logging.getLogger("comfy_client")


class ServerError(RuntimeError):
    """The server could not be started or reached, or it refused or failed a job; the message says which."""


def die_with_parent() -> None:
    """For ``Popen(preexec_fn=...)``: on Linux the child is killed when the process that started it dies, even
    by SIGKILL (the out-of-memory killer, a CI timeout), so no server is left running behind; elsewhere a no-op."""
    if sys.platform != "linux":
        return
    import ctypes
    import signal
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def host_flags(host: Path) -> set[str]:
    """The command-line flags the host's ``main.py`` accepts, read from its ``comfy/cli_args.py``."""
    text = (Path(host) / "comfy" / "cli_args.py").read_text(encoding="utf-8")
    return set(re.findall(r"[\"'](--[a-z0-9][a-z0-9-]*)[\"']", text))


def default_python(host: Path, version: str | None, explicit: str | None = None) -> str:
    """The Python that runs the server: ``explicit`` (--python), else this repository's host venv
    ``.venv/comfyui-<version>/bin/python`` (scripts/setup_hosts.sh) when it exists, else this Python."""
    import sys

    if explicit:
        return explicit
    venv = host_venv_python(version)
    return str(venv) if version and venv.is_file() else sys.executable


def host_venv_python(version: str | None) -> Path:
    """Where scripts/setup_hosts.sh puts the Python of the venv for host ``version`` (it may not exist yet)."""
    return PACK_ROOT / ".venv" / f"comfyui-{version}" / "bin" / "python"


def _websocket():
    """The ``websocket`` module of websocket-client, or a ServerError saying how to install it."""
    try:
        import websocket
    except ImportError:
        raise ServerError("the Python package websocket-client is missing (this client follows the job over "
                          "ComfyUI's websocket): pip install websocket-client") from None
    return websocket


def _multipart(fields: dict[str, str], file_field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with text fields and one file; returns (body, content type)."""
    boundary = uuid.uuid4().hex
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode()
             for k, v in fields.items()]
    parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{file_field}\"; filename=\"{filename}\"\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class ComfyClient:
    """One client of a ComfyUI server at ``url`` (e.g. ``http://127.0.0.1:8188``), with its own client id."""

    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    def _request(self, path: str, data: bytes | None = None, content_type: str | None = None) -> bytes:
        request = urllib.request.Request(self.url + path, data=data)
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")
            raise ServerError(f"{self.url}{path}: HTTP {e.code}: {body[:4000]}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ServerError(f"ComfyUI at {self.url} does not answer ({reason}): is it running, and is the URL "
                              "right (e.g. http://127.0.0.1:8188)?") from None

    def get_json(self, path: str):
        """GET ``path`` and decode its JSON."""
        return json.loads(self._request(path))

    def post_json(self, path: str, payload: dict):
        """POST ``payload`` as JSON to ``path`` and decode the JSON answer (empty answers give None)."""
        body = self._request(path, json.dumps(payload).encode(), "application/json")
        return json.loads(body) if body.strip() else None

    def ping(self) -> dict:
        """The server's /system_stats; a ServerError when it does not answer."""
        return self.get_json("/system_stats")

    def missing_nodes(self, class_types) -> list[str]:
        """The node types of ``class_types`` the server does not have (asks /object_info/<type>)."""
        return [name for name in sorted(set(class_types))
                if name not in self.get_json(f"/object_info/{urllib.parse.quote(name)}")]

    def upload_image(self, path: Path, name: str | None = None) -> str:
        """Upload an image file into the server's input folder; returns the name LoadImage takes."""
        path = Path(path)
        body, content_type = _multipart({"type": "input", "overwrite": "true"}, "image", name or path.name,
                                        path.read_bytes())
        answer = json.loads(self._request("/upload/image", body, content_type))
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]

    def queue(self, prompt: dict) -> str:
        """Queue an API-format prompt; returns its prompt id. Validation errors come back as a ServerError
        with each node's reason."""
        try:
            answer = self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})
        except ServerError as e:
            raise ServerError(f"the server refused the prompt: {_validation_text(str(e))}") from None
        return answer["prompt_id"]

    def history(self, prompt_id: str) -> dict:
        """The history entry of a finished prompt (``outputs``: each output node's files)."""
        return self.get_json(f"/history/{prompt_id}").get(prompt_id, {})

    def view(self, file: dict) -> bytes:
        """The bytes of a file a node reported (``{"filename", "subfolder", "type"}``), via /view."""
        query = urllib.parse.urlencode({k: file.get(k, "") for k in ("filename", "subfolder", "type")})
        return self._request(f"/view?{query}")

    def connect(self, timeout: float | None = None):
        """The websocket on which the server sends this client's messages (connect before queueing)."""
        websocket = _websocket()
        ws_url = "ws" + self.url[len("http"):] + f"/ws?clientId={self.client_id}"
        try:
            return websocket.create_connection(ws_url, timeout=timeout or self.timeout)
        except (OSError, websocket.WebSocketException) as e:
            raise ServerError(f"cannot open ComfyUI's websocket at {ws_url}: {e}") from None

    def follow(self, ws, prompt_id: str, on_message=None, idle_timeout: float = 3600.0) -> None:
        """Read the websocket until ``prompt_id`` is done (the server's ``executing`` with node None, sent
        after its history is written). ``on_message(type, data)`` sees every JSON message of this prompt
        (``progress``, ``executing``, ``executed``, ``execution_success``, ...); binary preview frames are
        skipped. ``execution_error`` and ``execution_interrupted`` raise a ServerError."""
        websocket = _websocket()
        ws.settimeout(idle_timeout)
        while True:
            try:
                raw = ws.recv()
            except websocket.WebSocketTimeoutException:
                raise ServerError(f"no message from the server for {idle_timeout:.0f} s while running "
                                  f"prompt {prompt_id}") from None
            except (OSError, websocket.WebSocketException) as e:
                raise ServerError(f"the server closed the connection while running prompt {prompt_id} ({e})") \
                    from None
            if not isinstance(raw, str):
                continue
            message = json.loads(raw)
            kind, data = message.get("type"), message.get("data") or {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if on_message:
                on_message(kind, data)
            if kind == "execution_error":
                raise ServerError(_execution_error_text(data))
            if kind == "execution_interrupted":
                raise ServerError(f"the job was interrupted on the server (at node {data.get('node_id')})")
            if kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                return

    def run(self, prompt: dict, on_message=None) -> dict:
        """Queue ``prompt``, follow it to the end and return its history entry."""
        ws = self.connect()
        try:
            prompt_id = self.queue(prompt)
            self.follow(ws, prompt_id, on_message)
        finally:
            ws.close()
        entry = self.history(prompt_id)
        if not entry:
            raise ServerError(f"the server has no history for prompt {prompt_id} after running it")
        return entry


def _validation_text(error: str) -> str:
    """The host's /prompt refusal (JSON after 'HTTP 400: ') as readable lines, or the text as it came."""
    try:
        answer = json.loads(error.split(": ", 2)[-1])
    except ValueError:
        return error
    lines = [f"{answer.get('error', {}).get('message', '')}: {answer.get('error', {}).get('details', '')}"]
    for node_id, info in (answer.get("node_errors") or {}).items():
        lines += [f"  node {node_id} ({info.get('class_type')}): {e.get('message')}: {e.get('details')}"
                  for e in info.get("errors", [])]
    return "\n".join(lines)


def _execution_error_text(data: dict) -> str:
    """The server's execution_error message as a readable error with the node and the host's traceback."""
    return (f"node {data.get('node_id')} ({data.get('node_type')}) failed on the server: "
            f"{data.get('exception_type')}: {data.get('exception_message')}\n" + "".join(data.get("traceback") or []))


class LocalServer:
    """The host's own server (``main.py``) as a subprocess on 127.0.0.1, for the length of a ``with`` block.

    ``host``: the ComfyUI checkout; ``python``: the interpreter that runs it (with the host's requirements);
    ``checkpoints``: files linked into the scratch ``models/checkpoints``; ``models``: more model files by the
    host's folder name (``{"diffusion_models": [...]}``); ``custom_nodes``: more node packs (folders) linked into
    its ``custom_nodes`` beside this one; ``extra_args``: more host flags.
    The scratch base directory (custom_nodes/ with a link to this pack, models/, input/, output/, temp/,
    user/) is removed when the block ends; the host folder is never written (``PYTHONDONTWRITEBYTECODE``).
    """

    def __init__(self, host: Path, python: str, checkpoints=(), extra_args=(), pack_root: Path = PACK_ROOT,
                 start_timeout: float = START_TIMEOUT_S, keep_log: Path | None = None, models=None, custom_nodes=()):
        self.host, self.python = Path(host), python
        self.checkpoints, self.extra_args = [Path(c) for c in checkpoints], list(extra_args)
        self.models = {folder: [Path(f) for f in files] for folder, files in (models or {}).items()}
        self.custom_nodes = [Path(c) for c in custom_nodes]
        self.pack_root, self.start_timeout, self.keep_log = Path(pack_root), start_timeout, keep_log
        self.base = self.process = self.url = None

    def __enter__(self) -> LocalServer:
        try:
            self.start()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def log_path(self) -> Path:
        return self.base / "comfyui.log"

    def make_base(self) -> Path:
        """A fresh scratch base directory; returns it."""
        self.base = Path(tempfile.mkdtemp(prefix="ledits_comfy_"))
        for sub in ("custom_nodes", "models/checkpoints", "input", "output", "temp", "user/default"):
            (self.base / sub).mkdir(parents=True)
        (self.base / "custom_nodes" / PACK_NAME).symlink_to(self.pack_root, target_is_directory=True)
        for folder, files in {"checkpoints": self.checkpoints, **self.models}.items():
            (self.base / "models" / folder).mkdir(parents=True, exist_ok=True)
            for file in files:
                (self.base / "models" / folder / file.name).symlink_to(file.resolve())
        for pack in self.custom_nodes:
            (self.base / "custom_nodes" / pack.name).symlink_to(pack.resolve(), target_is_directory=True)
        return self.base

    def command(self, port: int) -> list[str]:
        """``python main.py`` with the flags this host has (loopback, CPU, scratch folders)."""
        flags = host_flags(self.host)
        command = [self.python, "main.py", "--cpu", "--listen", LOOPBACK, "--port", str(port),
                   "--use-pytorch-cross-attention", "--base-directory", str(self.base)]
        if "--database-url" in flags:  # its default database is inside the host folder
            command += ["--database-url", f"sqlite:///{self.base / 'user' / 'comfyui.db'}"]
        command += [flag for flag in ("--disable-auto-launch", "--disable-api-nodes") if flag in flags]
        return command + self.extra_args

    def start(self) -> None:
        """Start the server (not yet waiting for it); its output goes to the scratch log file."""
        if not (self.host / "main.py").is_file():
            raise ServerError(f"{self.host} has no main.py: not a ComfyUI checkout (set COMFYUI_PATH)")
        self.make_base()
        port = free_port()
        self.url = f"http://{LOOPBACK}:{port}"
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        log.info("starting ComfyUI (%s) at %s with %s", self.host, self.url, self.python)
        with open(self.log_path, "w") as out:
            try:
                self.process = subprocess.Popen(self.command(port), cwd=self.host, env=env, stdout=out,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True, preexec_fn=die_with_parent)
            except OSError as e:
                raise ServerError(f"cannot start ComfyUI with {self.python}: {e}; pass --python with the "
                                  "interpreter that has the host's requirements") from None

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except (OSError, TypeError):
            return ""

    def wait_ready(self) -> None:
        """Wait until the server answers and serves this pack's nodes; a ServerError with its log if not."""
        client = ComfyClient(self.url, timeout=5)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"ComfyUI exited with code {self.process.returncode} while starting "
                                  f"({' '.join(self.process.args)}); the end of its log:\n{self.log_tail()}")
            try:
                if not client.missing_nodes(["LeditsSampler"]):
                    return
            except ServerError:
                pass
            time.sleep(0.5)
        raise ServerError(f"ComfyUI did not serve the LEDITS++ nodes within {self.start_timeout:.0f} s; "
                          f"the end of its log:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server (terminate, then kill after 20 s) and remove the scratch folder."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)
        if self.base is not None:
            if self.keep_log is not None and self.log_path.is_file():
                shutil.copy(self.log_path, self.keep_log)
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None
