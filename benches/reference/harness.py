"""Runs the reference Python generator and instantiator (../shared/reference) on a workload.

`cargo xtask bench-report` prepares a directory holding the protobuf modules generated from our
vendored protos (`gen/`) and a package `sa_ref` with the reference's `generator.py` and
`instantiator.py` copied into `sa_ref/speculative_actions/`, then runs, timed as a whole:

    python harness.py generate STORE BUILD1.json OUT.json
    python harness.py instantiate STORE BUILD2.json PREVIOUS_OUT.json TRUTH.json

The reference expects BuildStream's Element, Artifact and CAS objects; the classes below give it
exactly what it calls, reading the local store (casd's layout) directly. Nothing is cached here:
the reference fetches and parses a Directory each time it asks, as it would over its CAS.
Prints one JSON line with what it did.
"""

import hashlib
import json
import os
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))


def setup(prepared):
    sys.path.insert(0, os.path.join(prepared, "gen"))
    sys.path.insert(0, prepared)
    import importlib

    # The reference imports `.._protos.<package>` and `..types`: alias our generated modules.
    protos = types.ModuleType("sa_ref._protos")
    protos.__path__ = []
    sys.modules["sa_ref._protos"] = protos
    for name in [
        "build",
        "build.bazel",
        "build.bazel.remote",
        "build.bazel.remote.execution",
        "build.bazel.remote.execution.v2",
        "build.bazel.remote.execution.v2.remote_execution_pb2",
        "buildstream",
        "buildstream.v2",
        "buildstream.v2.speculative_actions_pb2",
    ]:
        sys.modules["sa_ref._protos." + name] = importlib.import_module(name)
    scope = types.ModuleType("sa_ref.types")

    class _Scope:
        BUILD = 2

    scope._Scope = _Scope
    sys.modules["sa_ref.types"] = scope


class Cas:
    """The CAS calls the reference makes, on a casd-layout store."""

    def __init__(self, root):
        from build.bazel.remote.execution.v2 import remote_execution_pb2 as re

        self.re = re
        self.root = root

    def _read(self, digest):
        path = os.path.join(self.root, "cas", "objects", digest.hash[:2], digest.hash[2:])
        with open(path, "rb") as f:
            return f.read()

    def fetch_directory_proto(self, digest):
        directory = self.re.Directory()
        directory.ParseFromString(self._read(digest))
        return directory

    def fetch_action(self, digest):
        action = self.re.Action()
        action.ParseFromString(self._read(digest))
        return action

    def store(self, message):
        data = message.SerializeToString()
        digest = self.re.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
        path = os.path.join(self.root, "cas", "objects", digest.hash[:2], digest.hash[2:])
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = path + ".ref-tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.rename(tmp, path)
        return digest

    def store_action(self, action):
        return self.store(action)

    def store_directory_proto(self, directory):
        return self.store(directory)


class Files:
    def __init__(self, digest):
        self.digest = digest

    def _get_digest(self):
        return self.digest


class Sources:
    def __init__(self, digest):
        self.digest = digest

    def cached(self):
        return True

    def get_files(self):
        return Files(self.digest)


class BuildDep:
    def __init__(self, name, key):
        self.element_name = name
        self.cache_key = key


class ArtifactProto:
    def __init__(self, build_deps):
        self.build_deps = build_deps


class Artifact:
    def __init__(self, files, build_deps, spec):
        self.files = files
        self.build_deps = build_deps
        self.spec = spec

    def cached(self):
        return True

    def get_files(self):
        return Files(self.files) if self.files is not None else None

    def _get_proto(self):
        return ArtifactProto(self.build_deps)


class Element:
    def __init__(self, name, key, sources, artifact, deps):
        self.name = name
        self.key = key
        self._Element__sources = Sources(sources) if sources is not None else None
        self.artifact = artifact
        self.deps = deps

    def sources(self):
        return [self._Element__sources] if self._Element__sources else []

    def _cached(self):
        return self.artifact is not None

    def _get_artifact(self):
        return self.artifact

    def _get_cache_key(self):
        return self.key

    def _dependencies(self, scope, recurse=False):
        return self.deps

    def info(self, message):
        pass


class ArtifactCache:
    def get_speculative_actions(self, artifact):
        return artifact.spec


def digest_of(re, text):
    hash_, size = text.split("/")
    return re.Digest(hash=hash_, size_bytes=int(size))


def load(path):
    with open(path) as f:
        return json.load(f)


def elements_of(cas, graph, previous=None):
    """Element objects in graph order. With `previous` (a generated graph), each element's
    artifact also carries what BuildStream's cached artifact holds at priming time: the
    previous build's dependency keys and SpeculativeActions."""
    from buildstream.v2 import speculative_actions_pb2 as sa_pb2

    re = cas.re
    before = {e["name"]: e for e in (previous or {"elements": []})["elements"]}
    by_name = {}
    for e in graph["elements"]:
        deps = [by_name[d] for d in e.get("build_deps", [])]
        spec = None
        old = before.get(e["name"], {})
        if old.get("speculative_actions"):
            spec = sa_pb2.SpeculativeActions()
            spec.ParseFromString(cas._read(digest_of(re, old["speculative_actions"])))
        build_deps = [
            BuildDep(d, before[d].get("cache_key")) for d in old.get("build_deps", []) if d in before
        ]
        artifact = None
        if e.get("artifact"):
            artifact = Artifact(digest_of(re, e["artifact"]), build_deps, spec)
        elif previous is not None and old:
            # Not built yet: its previous artifact is what the cache has.
            artifact = Artifact(None, build_deps, spec)
            artifact.cached = lambda: True
        sources = digest_of(re, e["sources"]) if e.get("sources") else None
        element = Element(e["name"], e.get("cache_key"), sources, artifact, deps)
        element._graph = e
        element._spec = spec
        by_name[e["name"]] = element
    return by_name


def generate(store, graph_path, out_path):
    from sa_ref.speculative_actions.generator import SpeculativeActionsGenerator

    cas = Cas(store)
    graph = load(graph_path)
    elements = elements_of(cas, graph)
    generator = SpeculativeActionsGenerator(cas)
    counts = {"actions": 0, "overlays": 0}
    for e in graph["elements"]:
        element = elements[e["name"]]
        if not e.get("subactions") and not e.get("artifact"):
            continue
        subactions = [digest_of(cas.re, d) for d in e.get("subactions", [])]
        spec = generator.generate_speculative_actions(element, subactions, element.deps)
        e["speculative_actions"] = "{0.hash}/{0.size_bytes}".format(cas.store(spec))
        counts["actions"] += len(spec.actions)
        counts["overlays"] += sum(len(a.overlays) for a in spec.actions)
    with open(out_path, "w") as f:
        json.dump(graph, f, indent=2)
    print(json.dumps(counts))


def instantiate(store, graph_path, previous_path, truth_path):
    from sa_ref.speculative_actions.instantiator import SpeculativeActionInstantiator

    cas = Cas(store)
    previous = load(previous_path)
    elements = elements_of(cas, load(graph_path), previous)
    truth = dict(load(truth_path))
    instantiator = SpeculativeActionInstantiator(cas, ArtifactCache())
    counts = {"actions": 0, "exact": 0, "wrong": 0, "none": 0}
    for element in elements.values():
        if element._spec is None:
            continue
        for spec_action in element._spec.actions:
            counts["actions"] += 1
            digest = instantiator.instantiate_action(spec_action, element, elements)
            base = "{0.hash}/{0.size_bytes}".format(spec_action.base_action_digest)
            if digest is None:
                counts["none"] += 1
            elif "{0.hash}/{0.size_bytes}".format(digest) == truth.get(base):
                counts["exact"] += 1
            else:
                counts["wrong"] += 1
    print(json.dumps(counts))


if __name__ == "__main__":
    setup(os.environ["SA_REF_PREPARED"])
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "generate":
        generate(*args)
    elif mode == "instantiate":
        instantiate(*args)
    else:
        sys.exit("usage: harness.py generate|instantiate …")
