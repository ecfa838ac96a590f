"""`diffmesh serve`: flags (`add_arguments`) and the server start (`run`).

Start-up is fast on purpose: the API answers as soon as uvicorn listens, while the runtime
(torch, node registry, engine, workers) is built on a background thread; routes that need it
wait for it (`RuntimeRef`).
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys

from diffmesh.errors import ConfigError
from diffmesh.server.config import PREVIEW_METHODS, ServerConfig

log = logging.getLogger("diffmesh.server")


def _add(group, *flags, **kwargs) -> None:
    """Adds a flag unless the parser already has it (the main CLI may add shared flags)."""
    try:
        group.add_argument(*flags, **kwargs)
    except argparse.ArgumentError:
        pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    try:
        from diffmesh.cli import add_folder_arguments

        add_folder_arguments(parser)
    except (ImportError, argparse.ArgumentError):
        pass
    net = parser.add_argument_group("server")
    _add(net, "--listen", default="127.0.0.1", nargs="?", const="0.0.0.0",
         help="address(es) to bind, comma-separated (default 127.0.0.1; bare flag = 0.0.0.0). Any address "
              "other than 127.0.0.1/::1/localhost requires an access token")
    _add(net, "--port", type=int, default=8188, help="TCP port (default 8188; 0 = any free port)")
    _add(net, "--auth-token", default=None,
         help="access token for every route and the websocket (header 'Authorization: Bearer T' or ?token=T); "
              "generated and printed when --listen is not local and none is given")
    _add(net, "--max-upload-size", type=float, default=100, help="largest request body in MB (default 100)")
    _add(net, "--enable-cors-header", nargs="?", const="*", default=None, metavar="ORIGIN",
         help="send CORS headers allowing ORIGIN (default '*') instead of the loopback origin check")
    _add(net, "--preview-method", default="none", choices=PREVIEW_METHODS,
         help="latent previews while sampling when a prompt does not choose (default none)")
    _add(net, "--preview-size", type=int, default=512, help="longest side of preview images (default 512)")
    _add(net, "--disable-metadata", action="store_true", help="do not write prompt/workflow into saved PNGs")
    _add(net, "--max-history", type=int, default=10000, metavar="N",
         help="history entries kept, oldest dropped first (default 10000, as ComfyUI)")
    _add(net, "--log-level", default="info", choices=("debug", "info", "warning", "error"))
    folders = parser.add_argument_group("folders (server)")
    _add(folders, "--base-directory", default=None, help="ComfyUI-style base folder (models/, input/, output/, ...)")
    _add(folders, "--output-directory", default=None)
    _add(folders, "--input-directory", default=None)
    _add(folders, "--temp-directory", default=None, help="parent of the temp folder (temp files go in DIR/temp)")
    _add(folders, "--user-directory", default=None, help="settings, workflows and the queue database")
    _add(folders, "--extra-model-paths-config", nargs="+", action="extend", default=None, metavar="PATH")
    try:
        from diffmesh.config.devices import add_device_arguments

        add_device_arguments(parser)
    except (ImportError, argparse.ArgumentError):
        pass
    try:
        from diffmesh.engine.options import add_engine_arguments

        add_engine_arguments(parser)
    except (ImportError, argparse.ArgumentError):
        pass
    try:
        from diffmesh.nodes.custom import add_arguments as add_custom_node_arguments

        add_custom_node_arguments(parser)
    except argparse.ArgumentError:
        pass


def build_paths(args: argparse.Namespace):
    """The folder layout, built the same way the runtime builds it (cheap: no torch)."""
    try:
        from diffmesh.runtime import build_paths as runtime_paths
    except ImportError:
        runtime_paths = None
    if runtime_paths is not None:
        return runtime_paths(args)
    from diffmesh.config.paths import Paths

    return Paths.build(getattr(args, "base_directory", None),
                       models_dir=getattr(args, "models_dir", None),
                       input_directory=getattr(args, "input_directory", None),
                       output_directory=getattr(args, "output_directory", None),
                       temp_directory=getattr(args, "temp_directory", None),
                       user_directory=getattr(args, "user_directory", None),
                       extra_model_paths=getattr(args, "extra_model_paths_config", None))


def runtime_builder(args: argparse.Namespace, pack_server=None):
    """A zero-argument function that builds the runtime (imported lazily: it pulls in torch);
    custom node packs register their routes and web folders with `pack_server`."""
    paths = build_paths(args)

    def build():
        from diffmesh.runtime import Runtime

        return Runtime.build(args, paths=paths, pack_server=pack_server)

    return build


def _sockets(config: ServerConfig) -> list[socket.socket]:
    """One listening socket per --listen address, all on the same port (port 0 = one free port)."""
    sockets, port = [], config.port
    for host in config.bind_hosts:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}", where="--listen/--port",
                              fix="choose a free port with --port, or stop the other server") from exc
        port = sock.getsockname()[1]
        sock.listen(2048)
        sock.set_inheritable(True)
        sockets.append(sock)
    config.port = port
    return sockets


def check_devices_early(args: argparse.Namespace) -> None:
    """Device flags checked before the server starts listening, as `diffmesh run` checks them
    (ConfigError → message and status 2). Only when the check is cheap (--cpu) or the flags pick
    GPUs (listing them imports torch, seconds that a plain start-up does not spend)."""
    picks_gpus = any(getattr(args, name, None) not in (None, False) for name in ("cuda_device", "default_device",
                                                                                 "gpu_only"))
    if getattr(args, "cpu", False) or picks_gpus:
        from diffmesh.config.devices import DeviceConfig

        DeviceConfig.from_args(args)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from diffmesh.compat import PackServer
    from diffmesh.server.app import create_app
    from diffmesh.server.runtime_ref import RuntimeRef

    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_devices_early(args)
    paths = build_paths(args)
    config = ServerConfig.from_args(args, user_directory=paths.user_dir)
    failed: list[BaseException] = []
    server: list = []

    def runtime_failed(exc: BaseException) -> None:   # a server without a runtime serves nothing
        failed.append(exc)
        if server:
            server[0].should_exit = True

    packs = PackServer()                               # custom node packs' routes, web folders, messages
    ref = RuntimeRef(runtime_builder(args, packs), on_failure=runtime_failed)
    app = create_app(ref, config, paths=paths, pack_server=packs)
    sockets = _sockets(config)
    host = config.bind_hosts[0]
    url_host = f"[{host}]" if ":" in host else host
    print(f"diffmesh: serving on http://{url_host}:{config.port}", flush=True)
    if config.token_generated:
        print(f"diffmesh: access token: {config.auth_token}  (send 'Authorization: Bearer <token>' "
              f"or open http://{url_host}:{config.port}/?token=<token>)", flush=True)
    uv = uvicorn.Config(app, log_level="warning", ws="websockets-sansio", lifespan="on", timeout_graceful_shutdown=5,
                        ws_max_size=16 * 1024 * 1024)
    server.append(uvicorn.Server(uv))
    if failed:                                         # failed before the server object existed
        server[0].should_exit = True
    server[0].run(sockets=sockets)
    if failed:
        exc = failed[0]
        message = str(exc) if isinstance(exc, ConfigError) else f"the runtime could not be built: " \
            f"{type(exc).__name__}: {exc}"
        print(f"diffmesh serve: {message}", file=sys.stderr, flush=True)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="diffmesh serve", description="Serve the diffmesh API and web UI")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ConfigError as exc:
        print(f"diffmesh serve: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
