"""Pretrained weights by name, resolved to one local file before any image is read.

``model.name`` is a timm name with or without its pretrained tag (``resnet50.a1_in1k``), ``hf-hub:ORG/REPO``
(``@REVISION`` or ``model.revision`` pins a snapshot) or ``local-dir:PATH``; ``model.pretrained`` is true (the
name's weights), false, a weights file, or a folder holding ``config.json`` + ``model.safetensors`` (what
``imgcls export --format timm`` and ``imgcls weights download --out`` write). Hub files come through
huggingface_hub's own cache (``HF_HUB_CACHE``, ``HF_HOME``, ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``, read when a
name is resolved, not when the library was imported), with the network wait bounded by ``HUB_TIMEOUT``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import timm

from ..errors import UserError, first_sentence
from ..io import file_sha256

HUB_TIMEOUT = 5.0  # seconds: the one connection probe, then huggingface_hub's wait for each file's metadata
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub repos hold, preferred first
PREPROCESSING = ("mean", "std", "crop_pct", "interpolation")  # the pretrained_cfg keys a run takes over


@dataclass(frozen=True)
class WeightsSource:
    """Where a run's initial weights came from: what model.json records and --resume / cv folds reuse."""
    architecture: str                  # the timm architecture built
    kind: str = "none"                 # none | file | folder | hub
    name: str = ""                     # model.name as given
    repo: str = ""                     # hub repo id (kind hub)
    revision: str = ""                 # the snapshot's commit hash (kind hub)
    file: str = ""                     # the weights file loaded
    sha256: str = ""                   # of that file
    pretrained_cfg: dict = field(default_factory=dict, compare=False)  # the weights' mean, std, crop_pct, ...

    @property
    def preprocessing(self) -> dict:
        return {k: self.pretrained_cfg[k] for k in PREPROCESSING if self.pretrained_cfg.get(k) is not None}

    def record(self) -> dict:
        """model.json's "weights": the source and the preprocessing the weights were trained with."""
        keep = ("architecture", "kind", "name", "repo", "revision", "file", "sha256")
        return {**{k: getattr(self, k) for k in keep}, "pretrained_cfg": _plain(self.preprocessing),
                **{k: self.pretrained_cfg[k] for k in ("license", "source") if k in self.pretrained_cfg}}


def _plain(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# ---------------------------------------------------------------- the hub's settings, read at call time

@dataclass(frozen=True)
class HubSettings:
    cache_dir: str
    offline: bool                      # the cache alone: HF_HUB_OFFLINE, or the hub did not answer
    endpoint: Optional[str]
    unreachable: bool = False          # offline because the probe failed


def hub_settings(probe: bool = True) -> HubSettings:
    """huggingface_hub's environment as it is now (its constants module reads it once, at import). Unless
    HF_HUB_OFFLINE is set, one TCP connection to the hub (or the proxy) is tried first, waiting at most
    HUB_TIMEOUT: where it fails, the cache alone is used (huggingface_hub itself would retry a refused
    connection five times with back-off, about 23 s per file)."""
    env = os.environ
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                              "huggingface")
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    offline = env.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    endpoint = env.get("HF_ENDPOINT") or None
    unreachable = probe and not offline and not _reachable(endpoint)
    return HubSettings(os.path.expanduser(cache), offline or unreachable, endpoint, unreachable)


def _reachable(endpoint: Optional[str]) -> bool:
    import socket
    from urllib.parse import urlparse
    from huggingface_hub import constants
    url = urlparse(endpoint or constants.ENDPOINT)
    proxy = os.environ.get("HTTPS_PROXY" if url.scheme == "https" else "HTTP_PROXY") or os.environ.get("ALL_PROXY")
    target = urlparse(proxy) if proxy else url
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((target.hostname or "", port), timeout=HUB_TIMEOUT).close()
        return True
    except OSError:  # refused, unreachable, no DNS, or no answer within HUB_TIMEOUT
        return False


def how_to_get(name: str) -> str:
    return (f"run 'imgcls weights download {name}' on a machine with a network, then copy the folder it "
            "writes (--out DIR, used as model.pretrained=DIR) or the Hugging Face cache to this machine")


def hub_file(repo: str, filename: str, revision: Optional[str], name: str, settings: HubSettings,
             required: bool = True) -> Optional[Path]:
    """One file of a hub repo, from the cache (offline, or the hub unreachable) or downloaded into it.
    None when the repo has no such file and ``required`` is False."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)
    try:
        return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=settings.cache_dir,
                                    endpoint=settings.endpoint, local_files_only=settings.offline,
                                    etag_timeout=HUB_TIMEOUT))
    except LocalEntryNotFoundError:  # (a subclass of EntryNotFoundError: caught first)
        if not required and _cached_snapshot(repo, revision, settings):
            return None  # the snapshot is cached without this optional file
        where = "the hub cannot be reached" if settings.unreachable else "HF_HUB_OFFLINE is set"
        raise UserError(f"model '{name}' ({repo}{'@' + revision if revision else ''}) is not in the Hugging Face "
                        f"cache '{settings.cache_dir}' and {where}; {how_to_get(name)}.") from None
    except EntryNotFoundError:
        if required:
            raise UserError(f"model '{name}': hub repo '{repo}' has no file '{filename}'; check the name.") from None
        return None
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise UserError(f"model '{name}': {type(e).__name__.replace('Error', '')} for '{repo}'"
                        f"{'@' + revision if revision else ''}; check the name and model.revision.") from None
    except OSError as e:  # a refused connection, a read timeout, a full disk
        raise UserError(f"model '{name}': '{filename}' of '{repo}' could not be fetched ({first_sentence(e)}); "
                        f"{how_to_get(name)}.") from None


def _cached_snapshot(repo: str, revision: Optional[str], settings: HubSettings) -> bool:
    folder = Path(settings.cache_dir) / f"models--{repo.replace('/', '--')}"
    rev = revision or "main"
    ref = folder / "refs" / rev
    commit = ref.read_text().strip() if ref.is_file() else rev
    return (folder / "snapshots" / commit).is_dir()


def _hub_weights(repo: str, revision: Optional[str], name: str, preferred: Optional[str] = None) -> Path:
    settings = hub_settings()
    names = (preferred,) if preferred else WEIGHT_FILES
    for i, filename in enumerate(names):
        path = hub_file(repo, filename, revision, name, settings, required=i == len(names) - 1)
        if path is not None:
            return path
    raise AssertionError("unreachable")


def snapshot_revision(path: Path) -> str:
    """The commit hash of the hub snapshot holding ``path`` (.../snapshots/<commit>/<file>)."""
    return path.parent.name if path.parent.parent.name == "snapshots" else ""


# ---------------------------------------------------------------- names -> a source

def split_revision(name: str, revision: Optional[str]) -> tuple[str, Optional[str]]:
    """'hf-hub:org/repo@rev' -> ('hf-hub:org/repo', 'rev'); model.revision must agree with an @rev."""
    if name.startswith("hf-hub:") and "@" in name:
        name, at = name.rsplit("@", 1)
        if revision and revision != at:
            raise UserError(f"model.name pins revision '{at}' but model.revision is '{revision}'; give one of them.")
        revision = at
    return name, revision


def _folder_weights(folder: Path, what: str) -> tuple[dict, Path]:
    """(config.json, weights file) of a timm folder."""
    config = folder / "config.json"
    if not config.is_file():
        raise UserError(f"{what} '{folder}' has no config.json; pass a folder written by 'imgcls weights download "
                        "--out' or 'imgcls export --format timm'.")
    try:
        cfg = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} '{config}' is not valid JSON ({e}); re-copy the folder.") from None
    for filename in WEIGHT_FILES:
        if (folder / filename).is_file():
            return cfg, folder / filename
    raise UserError(f"{what} '{folder}' holds no {' or '.join(WEIGHT_FILES)}; re-copy the folder.")


def _architecture(cfg: dict, where: str) -> str:
    arch = cfg.get("architecture")
    if not isinstance(arch, str) or not timm.is_model(arch):
        raise UserError(f"'{where}' names architecture {arch!r}, which is not a timm model; check the folder or repo.")
    return arch


def resolve_weights(name: str, pretrained: Union[bool, str, Path] = False,
                    revision: Optional[str] = None) -> WeightsSource:
    """Where ``model.name`` + ``model.pretrained`` (+ ``model.revision``) take their weights from, with the
    weights file found locally (downloaded into the cache when needed and reachable). Fails with one
    sentence when the weights cannot be had; reads no image and writes no run folder."""
    name, revision = split_revision(name, revision)
    if name.startswith("hf-hub:"):
        repo = name[len("hf-hub:"):]
        settings = hub_settings()
        cfg_path = hub_file(repo, "config.json", revision, name, settings)
        cfg = json.loads(cfg_path.read_text())
        arch = _architecture(cfg, str(cfg_path))
        if pretrained is False:
            return WeightsSource(arch, "none", name, pretrained_cfg=cfg.get("pretrained_cfg") or {})
        path = _hub_weights(repo, snapshot_revision(cfg_path) or revision, name)
        return _source(arch, "hub", name, path, cfg.get("pretrained_cfg") or {}, repo)
    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:"):]).expanduser()
        cfg, path = _folder_weights(folder, "model.name local-dir:")
        arch = _architecture(cfg, str(folder / "config.json"))
        if pretrained is False:
            return WeightsSource(arch, "none", name, pretrained_cfg=cfg.get("pretrained_cfg") or {})
        return _source(arch, "folder", name, path, cfg.get("pretrained_cfg") or {})
    if pretrained is False:
        return WeightsSource(name, "none", name)
    if pretrained is True:
        return _timm_hub(name, revision)
    path = Path(pretrained).expanduser()
    if path.is_dir():
        cfg, file = _folder_weights(path, "model.pretrained folder")
        return _source(name, "folder", name, file, cfg.get("pretrained_cfg") or {})
    return _source(name, "file", name, path, _registered_cfg(name) or {})


def _registered_cfg(name: str) -> Optional[dict]:
    from timm.models import get_pretrained_cfg
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:  # an unknown tag
        return None
    return None if cfg is None else cfg.to_dict()


def _timm_hub(name: str, revision: Optional[str]) -> WeightsSource:
    from timm.models import split_model_name_tag
    arch, tag = split_model_name_tag(name)
    cfg = _registered_cfg(name)
    if cfg is None or not cfg.get("hf_hub_id"):
        tags = [n for n in timm.list_pretrained(f"{arch}.*")][:8]
        raise UserError(f"model '{name}' has no pretrained weights on the Hugging Face hub in timm"
                        + (f" (its tags: {', '.join(tags)})" if tags else " (it has no pretrained tags)")
                        + "; pick a tagged name, or set model.pretrained to a weights file or folder.")
    repo = cfg["hf_hub_id"]
    full = f"{arch}.{cfg.get('tag') or tag}" if (cfg.get("tag") or tag) else arch
    path = _hub_weights(repo, revision, full, cfg.get("hf_hub_filename"))
    published = path.parent / "config.json"  # the snapshot's own pretrained_cfg, when it came with the weights
    if published.is_file():
        try:
            cfg = {**cfg, **(json.loads(published.read_text()).get("pretrained_cfg") or {})}
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            pass  # timm's registry values stand
    return _source(arch, "hub", name, path, cfg, repo)


def _source(arch: str, kind: str, name: str, path: Path, cfg: dict, repo: str = "") -> WeightsSource:
    if not path.is_file():
        raise UserError(f"model.pretrained file '{path}' does not exist; pass the path of a local weights file "
                        "(.safetensors, .pth or .bin) or a folder with config.json and model.safetensors.")
    return WeightsSource(arch, kind, name, repo, snapshot_revision(path) if kind == "hub" else "",
                         str(path), file_sha256(path), dict(cfg))


# ---------------------------------------------------------------- imgcls weights download | list

def download_weights(name: str, revision: Optional[str] = None, out: Optional[Union[str, Path]] = None
                     ) -> tuple[WeightsSource, Optional[Path]]:
    """Fill the Hugging Face cache with ``name``'s weights (from the cache alone when offline); with ``out``,
    also write a portable folder (model.safetensors + config.json with the pretrained_cfg, licence and
    source) that timm opens as ``local-dir:OUT`` and ``model.pretrained=OUT`` accepts. Never overwrites."""
    if name.startswith("local-dir:"):
        raise UserError(f"'{name}' is a local folder already; copy it, or pass a timm or hf-hub: name.")
    source = resolve_weights(name, True, revision)
    if out is None:
        return source, None
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out '{out}' already exists and is not empty; pass a new folder (nothing is overwritten).")
    from ..io import atomic_write_bytes, atomic_write_json
    from safetensors.torch import save
    state = timm.models.load_state_dict(source.file)  # a .bin snapshot becomes safetensors
    pretrained_cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in source.pretrained_cfg.items()
                      if k not in ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source")}
    pretrained_cfg["source"] = {"name": name, "repo": source.repo, "revision": source.revision,
                                "sha256": source.sha256}
    config = {"architecture": source.architecture, "num_classes": pretrained_cfg.get("num_classes", 1000),
              "pretrained_cfg": pretrained_cfg}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "model.safetensors", save({k: v.contiguous() for k, v in state.items()}))
    atomic_write_json(out / "config.json", config)
    return source, out


def list_cached_weights() -> list[dict]:
    """The model repos in the Hugging Face cache, one row per cached revision (no network call)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound
    settings = hub_settings(probe=False)
    try:
        info = scan_cache_dir(settings.cache_dir)
    except CacheNotFound:
        return []
    rows = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        for rev in sorted(repo.revisions, key=lambda r: r.commit_hash):
            files = sorted(f.file_name for f in rev.files)
            rows.append({"repo": repo.repo_id, "revision": rev.commit_hash, "refs": sorted(rev.refs),
                         "bytes": rev.size_on_disk, "weights": [f for f in files if f in WEIGHT_FILES]})
    return rows
