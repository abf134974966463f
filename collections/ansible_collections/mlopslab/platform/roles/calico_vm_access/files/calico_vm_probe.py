#!/usr/bin/env python3
"""Probe a VM service the way a pod would, from a Kubernetes node; print one JSON object.

    calico_vm_probe.py HOST PORT [--pod-source ADDR] [--masquerade yes|no] [--timeout S]
                      [--pg-user U --pg-database D]

The probe connects twice: from the node's own address, then bound to --pod-source, a local
address inside the pod CIDR (such as Calico's tunl0 address), so that the packets leave the node
exactly like a pod's and go through the same nat POSTROUTING rules. With --pg-user/--pg-database
the probe also sends a PostgreSQL StartupMessage (no password): the server then either asks for
authentication (its pg_hba admits the address it sees) or answers `no pg_hba.conf entry for host
"ADDR"`, which names the source address the VM saw. The probe never authenticates and changes
nothing. Standard library only. The verdicts avoid apostrophes, which YAML output doubles.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct


def _pg_startup(sock: socket.socket, user: str, database: str) -> dict[str, str]:
    params = b"user\0" + user.encode() + b"\0database\0" + database.encode() + b"\0\0"
    sock.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
    head = sock.recv(1)
    if head == b"R":
        return {"pg": "admitted", "pg_message": "the server asked for authentication: pg_hba admits this address"}
    if head == b"E":
        data = b""
        while len(data) < 4:
            chunk = sock.recv(4 - len(data))
            if not chunk:
                break
            data += chunk
        length = struct.unpack("!i", data)[0] if len(data) == 4 else 0
        body = b""
        while len(body) < length - 4:
            chunk = sock.recv(length - 4 - len(body))
            if not chunk:
                break
            body += chunk
        fields = {}
        for part in body.split(b"\0"):
            if part:
                fields[chr(part[0])] = part[1:].decode(errors="replace")
        return {"pg": "rejected", "pg_message": fields.get("M", body.decode(errors="replace"))}
    return {"pg": "error", "pg_message": f"unexpected first byte {head!r} (not a PostgreSQL server?)"}


def probe(host: str, port: int, source: str, timeout: float, pg_user: str, pg_database: str) -> dict[str, str]:
    """One TCP connection (bound to ``source`` when given), plus the PostgreSQL startup probe."""
    result: dict[str, str] = {"source": source or "the node address"}
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        if source:
            sock.bind((source, 0))
        sock.connect((host, port))
        result.update(tcp="ok", tcp_message="TCP connection established")
        if pg_user:
            try:
                result.update(_pg_startup(sock, pg_user, pg_database or pg_user))
            except OSError as exc:
                result.update(pg="error", pg_message=f"no PostgreSQL answer: {exc}")
    except TimeoutError:
        result.update(tcp="timeout", tcp_message=f"no answer within {timeout:g} s (packets dropped on the way)")
    except ConnectionRefusedError:
        result.update(tcp="refused", tcp_message="connection refused (nothing listens there, or a firewall rejects)")
    except OSError as exc:
        result.update(tcp="error", tcp_message=str(exc))
    finally:
        sock.close()
    return result


def verdict(target: str, node: dict[str, str], pod: dict[str, str] | None, masquerade: bool) -> tuple[bool, str]:
    """Whether pods can use the VM service, and what to do, in words."""
    snat_hint = (
        "Apply the SNAT fix (calico_vm_access_mode: snat on the nodes) so that pods reach the VM as the "
        "node address, or the IPPool fix (calico_vm_access_mode: ippool: ipipMode Never, natOutgoing true) "
        "when the nodes share a routed L2 segment."
    )
    if node.get("tcp") != "ok":
        return False, (
            f"{target} is not reachable from the node itself ({node.get('tcp_message')}). This is not the Calico "
            "problem: make the service listen on the lab address of the VM and open its firewall first; neither "
            "Calico fix helps until the node gets through."
        )
    rule = (
        "The MASQUERADE rule of this role for this VM is in place."
        if masquerade
        else "There is no MASQUERADE rule of this role for this VM."
    )
    if pod is None:
        if masquerade:
            return True, (
                f"The node reaches {target}. {rule} Pods therefore reach it as this node (this node has no "
                "address in the pod CIDR, so no pod-sourced probe ran)."
            )
        return False, (
            f"The node reaches {target}, but pods reach it with their pod address (or IPIP-encapsulated, which "
            f"a VM without a route back to the pod CIDR drops). {rule} {snat_hint}"
        )
    src = pod["source"]
    if pod.get("tcp") != "ok":
        advice = (
            "The rule exists, so look for what drops the packets after it (VM firewall, a route on the VM)."
            if masquerade
            else snat_hint
        )
        return False, (
            f"The node reaches {target}, but traffic from the pod address {src} does not "
            f"({pod.get('tcp_message')}): the VM drops pod-sourced traffic. {rule} {advice}"
        )
    if pod.get("pg") == "rejected":
        advice = (
            "The rule exists, yet the VM still refuses what it sees: check its pg_hba.conf for the node subnet."
            if masquerade
            else snat_hint
        )
        return False, (
            f"Traffic from the pod address {src} reaches {target}, but PostgreSQL refuses it: "
            f'"{pod.get("pg_message")}". {rule} {advice}'
        )
    if pod.get("pg") == "error":
        return False, f"Traffic from the pod address {src} reaches {target}, but {pod.get('pg_message')}. {rule}"
    seen = "as the node address (masqueraded)" if masquerade else f"with the pod address {src}"
    admitted = " and PostgreSQL admits it (it asks for a password)" if pod.get("pg") == "admitted" else ""
    if masquerade or pod.get("pg") == "admitted":
        return True, f"Pod to VM works: traffic from {src} reaches {target} {seen}{admitted}. {rule}"
    return True, (
        f"Traffic from the pod address {src} reaches {target} {seen} at the TCP level. {rule} If the service "
        "admits only the lab subnet, it will refuse pods: " + snat_hint
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--pod-source", default="", help="a local address inside the pod CIDR")
    parser.add_argument("--masquerade", choices=["yes", "no"], default="no")
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--pg-user", default="")
    parser.add_argument("--pg-database", default="")
    args = parser.parse_args()

    target = f"{args.host}:{args.port}"
    node = probe(args.host, args.port, "", args.timeout, args.pg_user, args.pg_database)
    pod = (
        probe(args.host, args.port, args.pod_source, args.timeout, args.pg_user, args.pg_database)
        if args.pod_source
        else None
    )
    works, words = verdict(target, node, pod, args.masquerade == "yes")
    print(json.dumps({"target": target, "works": works, "verdict": words, "node": node, "pod": pod}))


if __name__ == "__main__":
    main()
