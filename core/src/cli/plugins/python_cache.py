#!/usr/bin/env python3
"""ktstr process plugin {{NAME}}: a cache tier in a directory.

ktstr starts this file and talks to it over stdin/stdout, one JSON object
per line (`ktstr docs plugin-protocol`). Standard library only.

Each entry is <dir>/<key>/ holding the kernel's files and metadata.json. A
store writes it into <dir>/.tmp/ and publishes it with one rename, so
readers see the old entry or the new one. Like an artifact store, it
gives ktstr no files to use in place: store and list name the entry as
`location`, and a lookup copies it into the staging directory ktstr
lends it, checking every file's sha256. To make this a client of your
artifact store, replace `_copy` in `store` with an upload and in `lookup`
with a download. Files never go through the pipe, only their paths.

Settings ([plugin.{{NAME}}] in ktstr's config file):
    dir        = "/srv/kernels"   # required, absolute
    read_only  = false            # true: never store or remove
"""

import errno
import hashlib
import json
import os
import select
import shutil
import sys
import tempfile
import time
import traceback

NAME = "{{NAME}}"
VERSION = "0.1.0"
PROTOCOLS = [1]
KEYS = ("dir", "read_only")
CHUNK = 1 << 20


class PluginError(Exception):
    """An error ktstr shows as it is: kind, message, hint."""

    def __init__(self, kind, message, hint=None):
        super().__init__(message)
        self.kind, self.message, self.hint = kind, message, hint

    def wire(self):
        error = {"kind": self.kind, "message": self.message}
        if self.hint:
            error["hint"] = self.hint
        return error


class Host:
    """The protocol's transport: requests from stdin, messages to stdout."""

    def __init__(self):
        self.out = sys.stdout
        sys.stdout = sys.stderr  # a stray print() must not break the protocol
        self.buf = b""
        self.requests = []
        self.cancelled = set()
        self.eof = False

    def _fill(self, timeout):
        if self.eof or not select.select([0], [], [], timeout)[0]:
            return
        chunk = os.read(0, 1 << 16)
        if not chunk:
            self.eof = True
            return
        *lines, self.buf = (self.buf + chunk).split(b"\n")
        for line in filter(bytes.strip, lines):
            message = json.loads(line)
            if message.get("method") == "cancel":
                self.cancelled.add(message["params"]["id"])
            else:
                self.requests.append(message)

    def next_request(self):
        while not self.requests and not self.eof:
            self._fill(None)
        return self.requests.pop(0) if self.requests else None

    def send(self, message):
        self.out.write(json.dumps(message) + "\n")
        self.out.flush()


class Call:
    """One request: progress notifications and cancellation."""

    def __init__(self, host, call_id):
        self.host, self.id, self.reported = host, call_id, 0.0

    def notify(self, method, **params):
        self.host.send({"method": method, "params": params})

    def step(self, name):
        self.notify("progress.step", name=name)

    def finish_step(self):
        self.notify("progress.finish_step")

    def bytes(self, done, total):
        now = time.monotonic()
        if now - self.reported >= 0.25 or done == total:
            self.reported = now
            self.notify("progress.bytes", done=done, total=total)

    def check_cancel(self):
        self.host._fill(0)
        if self.id in self.host.cancelled:
            raise PluginError("cancelled", "interrupted")


def _copy(call, fin, dst, done, total):
    """Copy the open file fin to dst; return (sha256, size, done)."""
    digest, size = hashlib.sha256(), 0
    with open(dst, "wb") as fout:
        while True:
            call.check_cancel()
            chunk = fin.read(CHUNK)
            if not chunk:
                break
            fout.write(chunk)
            digest.update(chunk)
            size += len(chunk)
            done += len(chunk)
            call.bytes(done, total)
    return digest.hexdigest(), size, done


# What _open_entry returns for an entry replaced while it was being opened.
REPLACED = object()


class DirCache:
    """The cache tier (ktstr docs cache, "Backend contract")."""

    def __init__(self, config):
        config = config or {}
        table = f"[plugin.{NAME}]"
        if not isinstance(config, dict):
            raise PluginError("invalid-input", f"{table} must be a table")
        for key in config:
            if key not in KEYS:
                raise PluginError("invalid-input", f"{table}: unknown key {key!r}",
                                  f"known keys: {', '.join(KEYS)}")
        self.dir = config.get("dir")
        if not isinstance(self.dir, str) or not os.path.isabs(self.dir):
            raise PluginError("invalid-input", f"{table} dir = {self.dir!r}: not an absolute path",
                              f'set dir = "/srv/kernels" in {table}')
        self.read_only = bool(config.get("read_only", False))

    def _entry(self, key):
        if not key or key.startswith(".") or "/" in key:
            raise PluginError("invalid-input", f"cache key {key!r} is not one path component")
        return os.path.join(self.dir, key)

    def _corrupt(self, key, why):
        entry = self._entry(key)
        return PluginError("corrupt", f"{NAME} entry {entry}: {why}",
                           f"remove {entry}: the next build stores it again")

    def _metadata(self, key):
        path = os.path.join(self._entry(key), "metadata.json")
        try:
            with open(path, "rb") as f:
                return self._parse_metadata(key, f.read())
        except FileNotFoundError:
            return None

    def _parse_metadata(self, key, text):
        try:
            metadata = json.loads(text)
        except ValueError as e:
            raise self._corrupt(key, f"bad metadata.json: {e}")
        if not isinstance(metadata, dict) or metadata.get("key") != key:
            raise self._corrupt(key, "its metadata.json is not this key's")
        artifacts = metadata.get("artifacts")
        if not isinstance(artifacts, dict) or not all(
                name and name not in (".", "..") and "/" not in name
                and isinstance(info, dict) and isinstance(info.get("size"), int)
                and isinstance(info.get("sha256"), str)
                for name, info in artifacts.items()):
            raise self._corrupt(key, "its metadata.json lists artifacts that are not its files")
        return metadata

    def _refuse_writes(self):
        if self.read_only:
            raise PluginError("unsupported", f"{NAME} is read-only",
                              f"set read_only = false in [plugin.{NAME}] to store and remove")

    def lookup(self, call, key, staging):
        for _ in range(10):  # an entry replaced while it was opened is opened again
            opened = self._open_entry(key)
            if opened is None:
                return None
            if opened is REPLACED:
                continue
            metadata, files = opened
            dest = tempfile.mkdtemp(prefix=key + ".", dir=_made(staging))
            try:
                return self._fetch(call, key, metadata, files, dest)
            except BaseException:
                shutil.rmtree(dest, ignore_errors=True)
                raise
            finally:
                for f in files.values():
                    f.close()
        raise self._corrupt(key, "it keeps being replaced while it is read")

    def _open_entry(self, key):
        """The entry's metadata and its files, opened: (metadata, {name: file}).

        Everything is opened through one descriptor of the entry's
        directory, so it is all one stored version even while another
        writer replaces the entry (a store renames a whole new directory
        in; nothing is changed in place). None when there is no entry;
        REPLACED when it was replaced before all was open.
        """
        path = self._entry(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return None

        def still_there():
            try:
                now = os.stat(path)
            except FileNotFoundError:
                return False
            opened = os.fstat(fd)
            return (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino)

        files = {}
        try:
            try:
                with os.fdopen(os.open("metadata.json", os.O_RDONLY, dir_fd=fd), "rb") as f:
                    metadata = self._parse_metadata(key, f.read())
            except FileNotFoundError:
                return None if still_there() else REPLACED
            for name in metadata["artifacts"]:
                try:
                    files[name] = os.fdopen(os.open(name, os.O_RDONLY, dir_fd=fd), "rb")
                except FileNotFoundError:
                    if still_there():
                        raise self._corrupt(key, f"{name} is missing")
                    for f in files.values():
                        f.close()
                    return REPLACED
            return metadata, files
        except BaseException:
            for f in files.values():
                f.close()
            raise
        finally:
            os.close(fd)

    def _fetch(self, call, key, metadata, files, dest):
        artifacts = metadata["artifacts"]
        total = sum(info["size"] for info in artifacts.values())
        call.step(f"copying {key} from {self.dir}")
        done = 0
        for name, info in artifacts.items():
            sha, size, done = _copy(call, files[name], os.path.join(dest, name), done, total)
            if (sha, size) != (info["sha256"], info["size"]):
                raise self._corrupt(key, f"{name} does not match its recorded sha256 and size")
        with open(os.path.join(dest, "metadata.json"), "w") as f:
            json.dump(metadata, f)
        call.finish_step()
        return {"key": key, "dir": dest, "metadata": metadata, "origin": NAME}

    def store(self, call, key, artifacts, metadata):
        self._refuse_writes()
        tmp = tempfile.mkdtemp(prefix=key + ".", dir=_made(os.path.join(self.dir, ".tmp")))
        try:
            stored = dict(metadata, artifacts={})
            files = [(metadata["image_name"], artifacts["image"]),
                     ("vmlinux", artifacts.get("vmlinux")),
                     ("config", artifacts["config"]),
                     ("build.log.zst", artifacts.get("log"))]
            files = [(name, src) for name, src in files if src]
            total = sum(os.path.getsize(src) for _, src in files)
            call.step(f"storing {key} in {self.dir}")
            done = 0
            for name, src in files:
                with open(src, "rb") as fin:
                    sha, size, done = _copy(call, fin, os.path.join(tmp, name), done, total)
                stored["artifacts"][name] = {"sha256": sha, "size": size}
            with open(os.path.join(tmp, "metadata.json"), "w") as f:
                json.dump(stored, f, indent=1)
            call.check_cancel()
            self._publish(tmp, self._entry(key))
            call.finish_step()
            return self._stored(key, stored)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _stored(self, key, metadata):
        # Like an artifact store's entry: no files ktstr may use in place
        # (`dir` empty), only where it is (`location`); a lookup copies.
        return {"key": key, "dir": "", "location": self._entry(key), "metadata": metadata,
                "origin": NAME}

    def _publish(self, new, dest):
        # Another writer can publish the key between our moving the old
        # entry aside and our rename: whatever is there goes aside, again.
        while True:
            try:
                os.rename(new, dest)
                return
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            old = tempfile.mkdtemp(dir=os.path.join(self.dir, ".tmp"))
            try:
                os.rename(dest, os.path.join(old, "entry"))
            except FileNotFoundError:
                pass
            shutil.rmtree(old, ignore_errors=True)

    def list(self, call):
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        rows, corrupt = [], []
        for key in names:
            if key.startswith("."):
                continue
            try:
                metadata = self._metadata(key)
                if metadata is None:
                    continue
                for name, info in metadata.get("artifacts", {}).items():
                    path = os.path.join(self._entry(key), name)
                    if not os.path.isfile(path) or os.path.getsize(path) != info["size"]:
                        raise self._corrupt(key, f"{name} is missing or resized")
                rows.append({"status": "ok", "entry": self._stored(key, metadata)})
            except PluginError as e:
                corrupt.append({"status": "corrupt", "key": key, "reason": e.message})
        rows.sort(key=lambda r: r["entry"]["key"])
        rows.sort(key=lambda r: r["entry"]["metadata"].get("built_at", ""), reverse=True)
        return rows + corrupt

    def remove(self, call, key):
        self._refuse_writes()
        entry = self._entry(key)
        if not os.path.isdir(entry):
            return False
        old = tempfile.mkdtemp(dir=_made(os.path.join(self.dir, ".tmp")))
        try:
            os.rename(entry, os.path.join(old, "entry"))
        except FileNotFoundError:
            return False
        finally:
            shutil.rmtree(old, ignore_errors=True)
        return True

    def describe(self, call):
        return f"{NAME} cache at {self.dir}"

    def capabilities(self, call):
        return {"read_only": self.read_only}


def _made(path):
    os.makedirs(path, exist_ok=True)
    return path


STAGES = [{"kind": "cache", "name": NAME, "summary": "kernels in a directory (Python)",
           "config_keys": list(KEYS)}]
CACHE_METHODS = {
    "cache.lookup": lambda c, call, p: c.lookup(call, p["key"], p["staging"]),
    "cache.store": lambda c, call, p: c.store(call, p["key"], p["artifacts"], p["metadata"]),
    "cache.list": lambda c, call, p: c.list(call),
    "cache.remove": lambda c, call, p: c.remove(call, p["key"]),
    "cache.describe": lambda c, call, p: c.describe(call),
    "cache.capabilities": lambda c, call, p: c.capabilities(call),
}


def handle(instances, call, method, params):
    if method == "hello":
        if not set(params.get("protocols", [])) & set(PROTOCOLS):
            raise PluginError("unsupported", f"{NAME} speaks protocol {PROTOCOLS}",
                              "use a ktstr that speaks one of these")
        return {"protocol": max(set(params["protocols"]) & set(PROTOCOLS)),
                "name": NAME, "version": VERSION, "stages": STAGES}
    if method == "stage.new":
        if (params.get("kind"), params.get("name")) != ("cache", NAME):
            raise PluginError("not-found", f"{NAME} has no {params.get('kind')} stage "
                              f"{params.get('name')!r}")
        instances.append(DirCache(params.get("config")))
        return {"instance": len(instances) - 1}
    if method in CACHE_METHODS:
        return CACHE_METHODS[method](instances[params["instance"]], call, params)
    raise PluginError("unsupported", f"{NAME} does not implement {method}")


def main():
    host, instances = Host(), []
    while (request := host.next_request()) is not None:
        call_id, method = request.get("id"), request.get("method", "")
        try:
            result = handle(instances, Call(host, call_id), method, request.get("params") or {})
            host.send({"id": call_id, "result": result})
        except PluginError as e:
            host.send({"id": call_id, "error": e.wire()})
        except OSError as e:
            host.send({"id": call_id, "error": {"kind": "io", "message": f"{method}: {e}"}})
        except Exception as e:  # a bug here: report it and keep serving
            traceback.print_exc()
            host.send({"id": call_id, "error": {
                "kind": "internal", "message": f"plugin {NAME} failed in {method}: {e!r}",
                "hint": "its traceback is in the output of ktstr -v"}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
