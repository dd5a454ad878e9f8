#!/usr/bin/env python3
"""Offline validation of deploy/: Kubernetes schemas, CRD shapes, cross-file references.

1. Every built-in object in deploy/kubernetes, deploy/argocd and deploy/prometheus is
   validated against the Kubernetes JSON schemas shipped inside the PyPI package
   kubernetes-validate (strict: unknown fields are errors). No network is used.
2. The custom resources (ExternalSecret, Application, PrometheusRule,
   ServiceMonitor) are checked against the small schemas below: the fields their
   controllers require, with their types.
3. Ports, paths, names and labels referenced across files must agree, with the
   ConfigMap's cutover.toml and the Dockerfile; so must the replicas' [fleet]
   wiring (peers through the headless admin Service, the state file on an
   emptyDir, readiness on /readyz, the admin port open between replicas).

Exit 0 when everything holds; otherwise exit 1 and print every problem found.
Usage: deploy/validate.py [--kubernetes-version 1.33.0] [--root REPO]
"""

import argparse
import glob
import os
import re
import sys
import tomllib

import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMESPACE = "cutover"

STR = {"type": "string", "minLength": 1}
LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
META = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": STR, "namespace": STR, "labels": LABELS},
}


def crd(api_version, kind, spec):
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": META,
            "spec": spec,
        },
    }


CRD_SCHEMAS = {
    "ExternalSecret": crd("external-secrets.io/v1", "ExternalSecret", {
        "type": "object",
        "required": ["secretStoreRef", "target", "data"],
        "properties": {
            "refreshInterval": {"type": "string", "pattern": r"^([0-9]+(ns|us|ms|s|m|h))+$"},
            "secretStoreRef": {
                "type": "object", "required": ["name", "kind"], "additionalProperties": False,
                "properties": {"name": STR, "kind": {"enum": ["SecretStore", "ClusterSecretStore"]}},
            },
            "target": {
                "type": "object", "required": ["name"],
                "properties": {"name": STR, "creationPolicy": {"enum": ["Owner", "Orphan", "Merge", "None"]}},
            },
            "data": {
                "type": "array", "minItems": 1,
                "items": {
                    "type": "object", "required": ["secretKey", "remoteRef"], "additionalProperties": False,
                    "properties": {
                        "secretKey": STR,
                        "remoteRef": {"type": "object", "required": ["key"], "properties": {"key": STR}},
                    },
                },
            },
        },
    }),
    "Application": crd("argoproj.io/v1alpha1", "Application", {
        "type": "object",
        "required": ["project", "source", "destination", "syncPolicy"],
        "properties": {
            "project": STR,
            "source": {
                "type": "object", "required": ["repoURL", "path", "targetRevision"],
                "properties": {"repoURL": STR, "path": STR, "targetRevision": STR,
                               "directory": {"type": "object", "properties": {
                                   "recurse": {"type": "boolean"}, "include": STR}}},
            },
            "destination": {
                "type": "object", "required": ["namespace"],
                "properties": {"server": STR, "name": STR, "namespace": STR},
                "oneOf": [{"required": ["server"]}, {"required": ["name"]}],
            },
            "syncPolicy": {
                "type": "object", "required": ["automated"],
                "properties": {
                    "automated": {
                        "type": "object", "required": ["prune", "selfHeal"],
                        "properties": {"prune": {"const": True}, "selfHeal": {"const": True}},
                    },
                    "syncOptions": {"type": "array", "items": STR},
                },
            },
        },
    }),
    "PrometheusRule": crd("monitoring.coreos.com/v1", "PrometheusRule", {
        "type": "object",
        "required": ["groups"],
        "properties": {"groups": {
            "type": "array", "minItems": 1,
            "items": {
                "type": "object", "required": ["name", "rules"],
                "properties": {"name": STR, "rules": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "required": ["alert", "expr", "labels", "annotations"],
                        "additionalProperties": False,
                        "properties": {
                            "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                            "expr": STR,
                            "for": {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h|d|w|y))+$"},
                            "labels": {"type": "object", "required": ["severity"],
                                       "properties": {"severity": {"enum": ["page", "warning", "info"]}}},
                            "annotations": {"type": "object", "required": ["summary", "description"]},
                        },
                    },
                }},
            },
        }},
    }),
    "ServiceMonitor": crd("monitoring.coreos.com/v1", "ServiceMonitor", {
        "type": "object",
        "required": ["selector", "endpoints"],
        "properties": {
            "selector": {"type": "object", "required": ["matchLabels"], "properties": {"matchLabels": LABELS}},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["port", "path"],
                "properties": {"port": STR, "path": STR, "interval": STR, "authorization": {
                    "type": "object", "required": ["type", "credentials"],
                    "properties": {"type": {"const": "Bearer"}, "credentials": {
                        "type": "object", "required": ["name", "key"],
                        "properties": {"name": STR, "key": STR}}},
                }},
            }},
        },
    }),
}


class Problems:
    def __init__(self):
        self.items = []

    def add(self, where, message):
        self.items.append(f"{where}: {message}")

    def check(self, ok, where, message):
        if not ok:
            self.add(where, message)
        return ok


def load(problems):
    """Every YAML document under deploy/ (but Grafana's JSON) as (file, doc)."""
    docs = []
    for path in sorted(glob.glob(os.path.join(ROOT, "deploy", "**", "*.yaml"), recursive=True)):
        rel = os.path.relpath(path, ROOT)
        with open(path, encoding="utf-8") as f:
            try:
                for doc in yaml.safe_load_all(f):
                    if doc is not None:
                        docs.append((rel, doc))
            except yaml.YAMLError as e:
                problems.add(rel, f"not YAML: {e}")
    return docs


def validate_schemas(docs, version, problems):
    for rel, doc in docs:
        kind = doc.get("kind", "?")
        where = f"{rel} ({kind} {doc.get('metadata', {}).get('name', '?')})"
        if kind in CRD_SCHEMAS:
            for e in jsonschema.Draft202012Validator(CRD_SCHEMAS[kind]).iter_errors(doc):
                problems.add(where, f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}")
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(root)"
            problems.add(where, f"{path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.add(where, f"no Kubernetes {version} schema for {kind}: {e}")


def one(docs, kind, name=None):
    found = [d for _, d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    return found[0] if len(found) == 1 else None


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def port_of(listen):
    return int(listen.rsplit(":", 1)[1])


def cross_check(docs, p):
    for rel, d in docs:
        p.check(d.get("metadata", {}).get("namespace") in (NAMESPACE, "argocd"),
                rel, f"namespace must be {NAMESPACE!r}")

    dep = one(docs, "Deployment", "cutover-proxy")
    cm = one(docs, "ConfigMap", "cutover-proxy-config")
    if not (p.check(dep, "deploy/kubernetes", "one Deployment cutover-proxy")
            and p.check(cm, "deploy/kubernetes", "one ConfigMap cutover-proxy-config")):
        return
    conf = tomllib.loads(cm["data"]["cutover.toml"])
    http_port = port_of(conf["listen"]["http"])
    admin_port = port_of(conf["admin"]["listen"])
    grace = int(re.fullmatch(r"(\d+)s", conf["proxy"].get("grace", "25s")).group(1))

    spec = dep["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    d = "Deployment cutover-proxy"
    p.check(spec["replicas"] == 3, d, "3 replicas")
    p.check(selects(spec["selector"]["matchLabels"], labels), d, "selector must match the pod labels")
    spread = [c for c in pod.get("topologySpreadConstraints", [])
              if c["topologyKey"] == "kubernetes.io/hostname" and c["whenUnsatisfiable"] == "DoNotSchedule"]
    p.check(spread and selects(spread[0]["labelSelector"]["matchLabels"], labels), d,
            "replicas must be spread across nodes (topologySpreadConstraints on kubernetes.io/hostname)")
    c = pod["containers"][0]
    ports = {cp["name"]: cp["containerPort"] for cp in c["ports"]}
    p.check(ports.get("http") == http_port, d, f"container port http must be listen.http's {http_port}")
    p.check(ports.get("admin") == admin_port, d, f"container port admin must be admin.listen's {admin_port}")
    p.check(not conf["admin"]["listen"].startswith("127."), d,
            "admin.listen must not be loopback in Kubernetes (probes and the controller reach it)")
    # Readiness is /readyz: a replica that has not adopted the fleet's state yet (or
    # knows it is behind) gets no traffic. Liveness stays /healthz: being behind
    # wants a catch-up, not a restart.
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        g = c.get(probe, {}).get("httpGet", {})
        p.check(g.get("path") == path and g.get("port") in ("admin", admin_port), d,
                f"{probe} must be GET {path} on the admin port")
    roll = spec.get("strategy", {}).get("rollingUpdate", {})
    p.check(spec.get("strategy", {}).get("type", "RollingUpdate") == "RollingUpdate"
            and roll.get("maxUnavailable") == 0, d,
            "rollingUpdate.maxUnavailable must be 0: an old pod stops only once a new one "
            "has adopted the fleet's state")
    pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_s = int(pre[1]) if len(pre) == 2 and pre[0] == "sleep" else None
    p.check(pre_s is not None, d, "preStop must be [sleep, N]")
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    p.check(pre_s is not None and tgps > pre_s + grace, d,
            f"terminationGracePeriodSeconds {tgps} must exceed preStop {pre_s} s + proxy.grace {grace} s")
    res = c.get("resources", {})
    p.check(all(k in res.get(x, {}) for x in ("requests", "limits") for k in ("cpu", "memory")), d,
            "requests and limits for cpu and memory")
    p.check(pod.get("securityContext", {}).get("runAsNonRoot") is True, d, "runAsNonRoot")

    # The config file: a directory mount of the ConfigMap (a subPath mount never
    # sees updates), and --config pointing into it.
    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    cfg_vol = next((n for n, v in vols.items() if v.get("configMap", {}).get("name") == cm["metadata"]["name"]), None)
    if p.check(cfg_vol in mounts, d, "the ConfigMap must be mounted"):
        m = mounts[cfg_vol]
        p.check("subPath" not in m, d, "the ConfigMap must be mounted as a directory (no subPath) for hot reload")
        args = c.get("args", [])
        cfg_arg = args[args.index("--config") + 1] if "--config" in args else None
        p.check(cfg_arg == m["mountPath"] + "/cutover.toml", d,
                f"--config {cfg_arg} must be {m['mountPath']}/cutover.toml")

    # The token: ExternalSecret → Secret → volume → admin.token_file.
    es = one(docs, "ExternalSecret")
    if p.check(es, "deploy/kubernetes", "one ExternalSecret"):
        secret = es["spec"]["target"]["name"]
        keys = [x["secretKey"] for x in es["spec"]["data"]]
        tok_vol = next((n for n, v in vols.items() if v.get("secret", {}).get("secretName") == secret), None)
        if p.check(tok_vol in mounts, d, f"the Secret {secret} must be mounted"):
            want = [mounts[tok_vol]["mountPath"] + "/" + k for k in keys]
            p.check(conf["admin"].get("token_file") in want, "cutover.toml",
                    f"admin.token_file must be one of {want}")
        sm = one(docs, "ServiceMonitor")
        if sm:
            cred = sm["spec"]["endpoints"][0]["authorization"]["credentials"]
            p.check(cred["name"] == secret and cred["key"] in keys, "ServiceMonitor",
                    f"must use the token Secret {secret}")

    def on_emptydir(path):
        return any(path.startswith(m["mountPath"].rstrip("/") + "/") and "emptyDir" in vols.get(n, {})
                   and not m.get("readOnly") for n, m in mounts.items())

    ctl = conf["proxy"].get("control_socket")
    if ctl:
        p.check(on_emptydir(ctl), d, f"control_socket {ctl} must be on a writable emptyDir")

    # [fleet]: the state file survives a container restart (an emptyDir lives as
    # long as the pod), and the peers are every pod behind the headless Service.
    fleet = conf.get("fleet", {})
    state_file = fleet.get("state_file")
    if state_file is None and ctl:
        # The proxy's default: beside the control socket, <stem>.state.json.
        stem = os.path.splitext(ctl)[0]
        state_file = stem + ".state.json"
    if p.check(state_file, "cutover.toml", "fleet.state_file must be set (not \"\") in Kubernetes, "
               "so a restarted container comes back with its weights and holds"):
        p.check(on_emptydir(state_file), d,
                f"fleet.state_file {state_file}: its directory must be a writable emptyDir mount")

    svcs = [x for _, x in docs if x.get("kind") == "Service"]
    lb = [s for s in svcs if s["spec"].get("type") == "LoadBalancer"]
    headless = [s for s in svcs if s["spec"].get("clusterIP") == "None"]
    for s in svcs:
        p.check(selects(s["spec"]["selector"], labels), f"Service {s['metadata']['name']}",
                "selector must match the proxy's pods")
    if p.check(len(lb) == 1, "Service", "one LoadBalancer Service"):
        tp = lb[0]["spec"]["ports"][0]["targetPort"]
        p.check(tp == "http" or tp == http_port, "Service (LoadBalancer)", "targetPort must be the http port")
    if p.check(len(headless) == 1, "Service", "one headless Service for the admin port"):
        hp = headless[0]["spec"]["ports"][0]
        p.check(hp["port"] == admin_port and hp["targetPort"] in ("admin", admin_port), "Service (headless)",
                f"must expose the admin port {admin_port}")
        p.check(headless[0]["spec"].get("publishNotReadyAddresses") is True, "Service (headless)",
                "publishNotReadyAddresses must be true: a starting replica is not ready until it "
                "has found its peers through this name")
        name = headless[0]["metadata"]["name"]
        peers = fleet.get("peers")
        ok = False
        if isinstance(peers, str) and ":" in peers:
            host, _, port = peers.rpartition(":")
            parts = host.rstrip(".").split(".")
            ok = (port.isdigit() and int(port) == hp["port"] and parts[:2] == [name, NAMESPACE]
                  and (len(parts) == 2 or parts[2] == "svc"))
        p.check(ok, "cutover.toml", f"fleet.peers {peers!r} must be the headless Service and its port, "
                f"\"{name}.{NAMESPACE}.svc.cluster.local:{hp['port']}\"")
        sm = one(docs, "ServiceMonitor")
        if sm:
            p.check(selects(sm["spec"]["selector"]["matchLabels"], headless[0]["metadata"]["labels"]),
                    "ServiceMonitor", "must select the headless admin Service")
            p.check(sm["spec"]["endpoints"][0]["port"] == hp["name"], "ServiceMonitor",
                    "must scrape the admin port by name")
            p.check(sm["spec"]["endpoints"][0]["path"] == "/metrics", "ServiceMonitor", "path /metrics")

    pdb = one(docs, "PodDisruptionBudget")
    if p.check(pdb, "deploy/kubernetes", "one PodDisruptionBudget"):
        p.check(selects(pdb["spec"]["selector"]["matchLabels"], labels), "PodDisruptionBudget",
                "selector must match the proxy's pods")
        p.check(pdb["spec"].get("minAvailable", 0) < spec["replicas"], "PodDisruptionBudget",
                "minAvailable below the replica count, or no node can ever be drained")
    hpa = one(docs, "HorizontalPodAutoscaler")
    if p.check(hpa, "deploy/kubernetes", "one HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        p.check(ref["kind"] == "Deployment" and ref["name"] == dep["metadata"]["name"], "HPA",
                "must scale the proxy's Deployment")
        p.check(hpa["spec"]["minReplicas"] >= spec["replicas"], "HPA", "minReplicas at least the Deployment's")

    np = one(docs, "NetworkPolicy")
    if p.check(np, "deploy/kubernetes", "one NetworkPolicy"):
        p.check(selects(np["spec"]["podSelector"]["matchLabels"], labels), "NetworkPolicy",
                "podSelector must match the proxy's pods")
        admin_rules = [r for r in np["spec"]["ingress"] if any(x["port"] in (admin_port, "admin")
                                                               for x in r.get("ports", []))]
        p.check(admin_rules and all(r.get("from") for r in admin_rules), "NetworkPolicy",
                "every rule for the admin port must name who may connect")
        p.check(any(f.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")
                    == "cutover-controller" for r in admin_rules for f in r.get("from", [])),
                "NetworkPolicy", "the controller must reach the admin port")
        p.check(any("namespaceSelector" not in f and selects(f.get("podSelector", {}).get("matchLabels"), labels)
                    for r in admin_rules for f in r.get("from", [])),
                "NetworkPolicy", "the proxy replicas must reach each other's admin port ([fleet] peers)")
        open_rules = [r for r in np["spec"]["ingress"] if not r.get("from")]
        p.check(all(x["port"] in (http_port, "http") for r in open_rules for x in r.get("ports", [{"port": None}])),
                "NetworkPolicy", "only the traffic port may be open to everyone")

    app = one(docs, "Application")
    if p.check(app, "deploy/argocd", "one Application"):
        src = app["spec"]["source"]
        p.check(os.path.isdir(os.path.join(ROOT, src["path"])), "Application", f"path {src['path']} must exist")
        p.check(app["spec"]["destination"]["namespace"] == NAMESPACE, "Application", f"destination {NAMESPACE}")

    # The image: the same ports and health path as the manifests.
    dockerfile = os.path.join(ROOT, "Dockerfile")
    if p.check(os.path.exists(dockerfile), "Dockerfile", "missing"):
        text = open(dockerfile, encoding="utf-8").read()
        exposed = {int(x) for line in re.findall(r"^EXPOSE\s+(.+)$", text, re.M) for x in re.findall(r"\d+", line)}
        p.check(exposed == {http_port, admin_port}, "Dockerfile", f"EXPOSE {sorted(exposed)} must be "
                f"{sorted({http_port, admin_port})}")
        p.check(re.search(rf"HEALTHCHECK[^\n]*(\\\n[^\n]*)*127\.0\.0\.1:{admin_port}/healthz", text) is not None,
                "Dockerfile", f"HEALTHCHECK must GET /healthz on the admin port {admin_port}")
        p.check(re.search(r"^USER\s+(?!root|0\b)\S+", text, re.M) is not None, "Dockerfile", "must run as non-root")
        p.check("scripts/build-release.sh" in text, "Dockerfile", "must build with scripts/build-release.sh")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kubernetes-version", default="1.33.0")
    ap.add_argument("--root", help="the repository to check (default: this file's)")
    args = ap.parse_args()
    global ROOT
    if args.root:
        ROOT = os.path.abspath(args.root)
    problems = Problems()
    docs = load(problems)
    validate_schemas(docs, args.kubernetes_version, problems)
    cross_check(docs, problems)
    if problems.items:
        print(f"{len(problems.items)} problems in deploy/:", file=sys.stderr)
        for item in problems.items:
            print(f"  {item}", file=sys.stderr)
        return 1
    kinds = sorted({d["kind"] for _, d in docs})
    print(f"deploy/: {len(docs)} objects valid (Kubernetes {args.kubernetes_version} schemas, "
          f"custom resources, cross-file references): {', '.join(kinds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
