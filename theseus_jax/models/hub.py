"""Model references: a local checkpoint folder or a Hugging Face Hub ID, resolved to a folder.

`org/name` (optionally `org/name@revision`) that is not an existing local folder is a Hub
ID, resolved with `huggingface_hub.snapshot_download`: its cache layout and settings
(`HF_HOME`, `HF_HUB_CACHE`, `HF_HUB_OFFLINE`, `HF_TOKEN` or a stored login) apply as in
`transformers`. Online it downloads once into the cache; offline it uses the cache; when
neither works, `MissingCheckpoint` names the ID, the cache folder searched and how
to fill it. Only the files a checkpoint needs are fetched (config, tokenizer, weights).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from theseus_jax.errors import MissingCheckpoint

# Config, tokenizer files, safetensors weights (single or sharded, with its index).
_CHECKPOINT_FILES = [
    "config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "*.model",
    "model*.safetensors*",
]
# Legacy PyTorch weights, fetched only when a repository has no safetensors.
_PYTORCH_FILES = ["pytorch_model*.bin*"]
_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.\-]*/[\w.\-]+)(?:@(?P<revision>[\w.\-/]+))?")


def parse_hub_id(reference: str) -> tuple[str, str | None] | None:
    """`org/name[@revision]` -> (repo_id, revision); None if `reference` is not of that form."""
    match = _HUB_ID.fullmatch(reference)
    if match is None or reference.startswith((".", "/", "~")):
        return None
    return match["repo"], match["revision"]


def resolve_model(reference: str | os.PathLike) -> Path:
    """The local folder of a model reference: the folder itself, or the Hub ID's snapshot."""
    path = Path(reference)
    if path.is_dir():
        return path
    hub_id = parse_hub_id(os.fspath(reference))
    if hub_id is None:
        raise MissingCheckpoint(
            f"{reference}: no such checkpoint folder (a model is a local folder or a Hub ID org/name[@revision])"
        )
    return _snapshot(os.fspath(reference), *hub_id)


def _snapshot(reference: str, repo_id: str, revision: str | None) -> Path:
    import huggingface_hub
    from huggingface_hub import constants, errors

    cache = Path(constants.HF_HUB_CACHE)
    where = cache / f"models--{repo_id.replace('/', '--')}"
    local = "no local folder of that name; "
    try:
        folder = Path(huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=_CHECKPOINT_FILES))
        if not any(folder.glob("model*.safetensors*")):
            folder = Path(
                huggingface_hub.snapshot_download(
                    repo_id, revision=revision, allow_patterns=_CHECKPOINT_FILES + _PYTORCH_FILES
                )
            )
    except errors.RevisionNotFoundError as err:
        raise MissingCheckpoint(f"{reference}: the Hub has no revision {revision!r} of {repo_id}") from err
    except (errors.RepositoryNotFoundError, errors.GatedRepoError) as err:
        raise MissingCheckpoint(
            f"{reference}: {local}the Hub has no model {repo_id!r} this login may read "
            "(check the name; for a private or gated model run `hf auth login` or set HF_TOKEN)"
        ) from err
    except (errors.LocalEntryNotFoundError, OSError) as err:
        cause = type(err.__cause__ or err).__name__
        reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"the Hub cannot be reached ({cause})"
        raise MissingCheckpoint(
            f"{reference}: {local}{reason} and {where} holds no complete copy of {repo_id}"
            f"{'@' + revision if revision else ''}; on a machine with network run `hf download {repo_id}"
            f"{' --revision ' + revision if revision else ''}` and copy {where.name} into {cache} "
            "(or point HF_HUB_CACHE/HF_HOME to a cache that holds it)"
        ) from err
    return folder
