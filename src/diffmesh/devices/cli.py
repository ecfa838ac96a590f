"""`diffmesh doctor` (dispatched lazily by `diffmesh.cli`): `add_arguments(parser)` and `run(args)`."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-bandwidth", action="store_true", help="skip the copy bandwidth measurement")
    parser.add_argument("--bandwidth-mb", type=int, default=64, metavar="MB",
                        help="bytes per measured copy, in MiB (default 64)")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="also list the nodes of this Ray cluster (host:port of `ray start --head`)")


def run(args: argparse.Namespace) -> int:
    from diffmesh.devices.doctor import examine, format_text
    from diffmesh.errors import ConfigError

    if args.bandwidth_mb < 1:
        raise ConfigError("--bandwidth-mb must be at least 1", where="--bandwidth-mb")
    diagnosis = examine(measure=not args.no_bandwidth, nbytes=args.bandwidth_mb * 1024 ** 2)
    nodes = None
    if args.ray_address:
        from diffmesh.devices.cluster import ray_nodes

        nodes = ray_nodes(args.ray_address)
    if args.json:
        report = diagnosis.to_dict()
        if nodes is not None:
            report["ray_cluster"] = {"address": args.ray_address, "nodes": nodes}
        print(json.dumps(report, indent=1, default=str))
    else:
        print(format_text(diagnosis))
        if nodes is not None:
            from diffmesh.devices.cluster import format_nodes

            print(format_nodes(args.ray_address, nodes))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="diffmesh doctor", description="devices, links and the settings that fit")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
