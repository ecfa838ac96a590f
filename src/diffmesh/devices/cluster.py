"""The nodes of a Ray cluster, for `diffmesh doctor --ray-address`: each node's address, whether it is
alive, and the CPUs, GPUs (with their type where Ray reports one) and memory it offers."""

from __future__ import annotations

from typing import Any

GIB = 1024 ** 3


def ray_nodes(address: str) -> list[dict[str, Any]]:
    """Connect to the cluster as a short-lived driver and list its nodes (the token, when the cluster
    uses token authentication, comes from RAY_AUTH_MODE / RAY_AUTH_TOKEN as for any Ray driver)."""
    try:
        import ray
    except ImportError as exc:
        from diffmesh.errors import ConfigError

        raise ConfigError("listing a Ray cluster needs Ray", where="--ray-address",
                          fix="pip install 'diffmesh[ray]'") from exc
    ray.init(address=address, namespace="diffmesh-doctor", log_to_driver=False, configure_logging=False)
    try:
        return [_node(n) for n in ray.nodes()]
    finally:
        ray.shutdown()


def _node(n: dict) -> dict[str, Any]:
    res = n.get("Resources", {})
    gpu_types = sorted(k.removeprefix("accelerator_type:") for k in res if k.startswith("accelerator_type:"))
    return {"address": n.get("NodeManagerAddress"), "alive": bool(n.get("Alive")), "cpus": res.get("CPU", 0),
            "gpus": res.get("GPU", 0), "gpu_types": gpu_types, "memory_gib": round(res.get("memory", 0) / GIB, 1),
            "object_store_gib": round(res.get("object_store_memory", 0) / GIB, 1)}


def format_nodes(address: str, nodes: list[dict[str, Any]]) -> str:
    lines = [f"Ray cluster at {address}: {sum(n['alive'] for n in nodes)} of {len(nodes)} nodes alive"]
    for n in nodes:
        gpus = f", {n['gpus']:g} GPU ({', '.join(n['gpu_types'])})" if n["gpus"] else ""
        lines.append(f"  {n['address']:<15} {'alive' if n['alive'] else 'DEAD ':5}  {n['cpus']:g} CPU{gpus}, "
                     f"{n['memory_gib']} GiB memory, {n['object_store_gib']} GiB object store")
    return "\n".join(lines)
