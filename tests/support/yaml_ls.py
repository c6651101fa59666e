"""The real yaml-language-server, driven over LSP stdio as an editor drives it.

Installed once from the npm registry into ``<test cache>/yaml-ls/<version>`` (the cache of
``tests.support.prefect_server``: ``RUNNER_TEST_CACHE``, default ``~/.cache/runner-tests``)
and reused. It needs ``node`` and ``npm`` (yaml-language-server 2.0.0 asks for node >= 22.13
in its package.json and runs on node 20, which npm warns about and the tests use).

    with LanguageServer(ensure_installed(), root=ROOT) as server:
        found = server.diagnostics({"file:///.../x.yaml": text})   # uri -> [diagnostic, ...]

Each document is opened with its text (``textDocument/didOpen``), so a document need not
exist on disk: its ``# yaml-language-server: $schema=...`` line is resolved against its URI.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from tests.support import npm
from tests.support.npm import missing_tools

__all__ = ["LanguageServer", "ensure_installed", "missing_tools"]

VERSION = "2.0.0"  # the exact version the tests use; the reports came from 2.0.0
#: What an editor with the YAML extension sends (the schema store is off: no network).
SETTINGS: dict[str, Any] = {
    "yaml": {
        "validate": True,
        "hover": True,
        "completion": True,
        "format": {"enable": False},
        "schemaStore": {"enable": False},
        "schemas": {},
    }
}
Diagnostic = dict[str, Any]
BINARY = Path("node_modules") / ".bin" / "yaml-language-server"


def ensure_installed(version: str = VERSION) -> Path:
    """The ``yaml-language-server`` executable of ``version``, installed on first use."""
    home = npm.install(
        "yaml-language-server",
        version,
        "yaml-ls",
        installed=lambda home: (home / BINARY).exists(),
    )
    return home / BINARY


class LanguageServer:
    """One ``yaml-language-server --stdio`` process, initialised for ``root``."""

    def __init__(self, binary: Path, *, root: Path, timeout: float = 60.0) -> None:
        self.binary = binary
        self.root = root
        self.timeout = timeout
        self._messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._next_id = 0
        self._log: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LanguageServer:
        self._log = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [str(self.binary), "--stdio"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        threading.Thread(target=self._read, daemon=True).start()
        uri = self.root.as_uri()
        answer = self._request(
            "initialize",
            {
                "processId": os.getpid(),
                "rootUri": uri,
                "workspaceFolders": [{"uri": uri, "name": self.root.name}],
                "capabilities": {
                    "textDocument": {"publishDiagnostics": {}},
                    "workspace": {"configuration": True},
                },
            },
        )
        if "error" in answer:
            raise RuntimeError(f"initialize failed: {answer['error']}")
        self._notify("initialized", {})
        self._notify("workspace/didChangeConfiguration", {"settings": SETTINGS})
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._process is not None:
            with contextlib.suppress(Exception):
                self._request("shutdown", None, timeout=5)
                self._notify("exit", None)
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._log is not None:
            self._log.close()

    def diagnostics(self, documents: Mapping[str, str]) -> dict[str, list[Diagnostic]]:
        """Open every document (uri -> text) and return what the server published for each:
        the last list once every document has one and the server has been quiet a moment."""
        for version, (uri, text) in enumerate(documents.items(), 1):
            self._notify(
                "textDocument/didOpen",
                {
                    "textDocument": {
                        "uri": uri,
                        "languageId": "yaml",
                        "version": version,
                        "text": text,
                    }
                },
            )
        found: dict[str, list[Diagnostic]] = {}
        deadline = time.monotonic() + self.timeout
        quiet_until: float | None = None
        while True:
            now = time.monotonic()
            if quiet_until is not None and now >= quiet_until:
                return found
            if now >= deadline:
                missing = sorted(set(documents) - set(found))
                raise TimeoutError(f"no diagnostics within {self.timeout}s for {missing}")
            message = self._next(min(deadline, quiet_until or deadline) - now)
            if message is None or message.get("method") != "textDocument/publishDiagnostics":
                continue
            params = message["params"]
            if params["uri"] in documents:
                found[params["uri"]] = params["diagnostics"]
                if set(found) == set(documents):
                    quiet_until = time.monotonic() + 0.5  # a later list replaces an earlier one

    def stderr(self) -> str:
        if self._log is None or self._log.closed:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    # -- the protocol ----------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        assert self._process is not None and self._process.stdin is not None
        body = json.dumps({"jsonrpc": "2.0", **message}).encode("utf-8")
        self._process.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self._process.stdin.flush()

    def _notify(self, method: str, params: Any) -> None:
        self._send({"method": method, "params": params})

    def _request(self, method: str, params: Any, *, timeout: float | None = None) -> dict[str, Any]:
        self._next_id += 1
        ident = self._next_id
        self._send({"id": ident, "method": method, "params": params})
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            message = self._next(deadline - time.monotonic())
            if message is not None and message.get("id") == ident and "method" not in message:
                return message
        raise TimeoutError(f"no answer to {method} within {timeout or self.timeout}s")

    def _next(self, timeout: float) -> dict[str, Any] | None:
        """The next message from the server (its own requests answered here), or None."""
        try:
            message = self._messages.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None
        if message is None:
            raise RuntimeError(f"yaml-language-server exited:\n{self.stderr()[-3000:]}")
        if "id" in message and "method" in message:  # a request of the server's
            result: Any = None
            if message["method"] == "workspace/configuration":
                items = message["params"].get("items", [])
                result = [SETTINGS.get(item.get("section", "")) for item in items]
            self._send({"id": message["id"], "result": result})
        return message

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        stream = self._process.stdout
        try:
            while True:
                length = None
                while True:
                    line = stream.readline()
                    if not line:
                        return
                    line = line.strip()
                    if not line:
                        break
                    name, _, value = line.decode("ascii").partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                if length is None:
                    continue
                self._messages.put(json.loads(stream.read(length)))
        finally:
            self._messages.put(None)
