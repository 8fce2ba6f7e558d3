"""A render job: a matrix of prompts x seeds x lengths x models, expanded into batches and takes.

A job comes from a TOML file (``stemd render JOB.toml``) or from flags; flags given on the command
line override the file. Every batch (one model, prompt, seed and length) is validated through
:class:`stemd.protocol.GenerateRequest` when the job is built, so a bad value fails before any work
starts, with the protocol's one-line message. A batch makes ``variations`` takes in one pass on the
device.

Take names are a pure function of the parameters (never "the next free number"), so a re-run finds
the takes it already made. Each take also carries a ``key``: a hash of every parameter that shapes
its audio and files. A take is finished when its audio file exists under its final name and its
sidecar records the same key (see :func:`stemd.daemon.render.files.is_finished`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from stemd.errors import StemdError
from stemd.models.registry import DECODE_BACKENDS
from stemd.protocol import GenerateRequest, ProtocolError, parse_tempo
from stemd.takes import slug
from stemd.timing import Meter, TimingError

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

#: output formats: WAV float / 24-bit / 16-bit, FLAC 24- or 16-bit
FORMATS = {"float32": "wav", "pcm24": "wav", "pcm16": "wav", "flac": "flac", "flac16": "flac"}
STEM_NAMES = ("drums", "bass", "other", "vocals")
#: generate keys newer than stemd render's first sidecars (:attr:`Batch.earlier_keys`)
NEWER_KEYS = ("guide", "chords", "guide_strength")


class JobError(StemdError):
    """A job file or flag a producer can fix."""

    code = "bad_arguments"


@dataclass(frozen=True)
class RenderJob:
    """Everything a render needs; one value per field except the matrix axes (lists)."""

    models: tuple = ("facebook/musicgen-small",)
    prompts: tuple = ("",)
    seeds: tuple = (0,)
    bars: tuple = (4,)
    variations: int = 1
    bpm: str = "120"
    meter: str = "4/4"
    start_bar: int = 0
    sample_rate: int = 48000
    channels: int = 2
    temperature: Optional[float] = None  # the sampling settings: None is the request's default (Sampling)
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    guidance: Optional[float] = None     # None: the model's own (MusicGen 3; distilled diffusion models 1)
    steps: Optional[int] = None          # diffusion models' denoising steps (None: the model's own)
    key: str = ""
    chords: str = ""                     # a guide: chord symbols per bar (stemd.guides.chords)
    guide: str = ""                      # a guide: a Standard MIDI File's path
    guide_strength: Optional[float] = None
    loop: bool = False
    format: str = "float32"
    lufs: Optional[float] = None
    stems: tuple = ()
    stems_model: str = ""
    device: Optional[str] = None
    dtype: Optional[str] = None
    backend: Optional[str] = None        # MusicGen's decoding backend (registry.DECODE_BACKENDS; None: registry.chosen_backend's)
    out: str = "takes"
    contact_sheet: bool = True

    def batches(self) -> list["Batch"]:
        """The matrix in a stable order: model, prompt, bars, seed."""
        if self.format not in FORMATS:
            raise JobError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        bad = [s for s in self.stems if s not in STEM_NAMES]
        if bad:
            raise JobError(f"unknown stem {bad[0]!r}; stems are {', '.join(STEM_NAMES)}")
        if self.stems and not self.stems_model:
            raise JobError("--stems needs --stems-model: an htdemucs checkpoint (.th) or a folder of them")
        if self.backend is not None and self.backend not in DECODE_BACKENDS:
            raise JobError(f"backend must be one of {', '.join(DECODE_BACKENDS)}, got {self.backend!r}")
        if self.lufs is not None and not -70.0 <= self.lufs <= 0.0:
            raise JobError(f"lufs must be -70..0, got {self.lufs}")
        for axis in ("models", "prompts", "seeds", "bars"):
            if not getattr(self, axis):
                raise JobError(f"{axis} is empty: give at least one")
        try:
            bpm, meter = parse_tempo(self.bpm), Meter.parse(self.meter)
        except (TimingError, ProtocolError) as e:
            raise JobError(str(e)) from None
        prompt_labels = _prompt_labels(self.prompts)
        guide = {}
        if self.chords:
            guide["chords"] = self.chords
        if self.guide:
            try:
                guide["guide"] = Path(self.guide).expanduser().read_bytes()
            except OSError as e:
                raise JobError(f"guide {self.guide}: {e.strerror or e}") from None
        if self.guide_strength is not None:
            guide["guide_strength"] = self.guide_strength
        sampling = {k: v for k in ("temperature", "top_k", "top_p", "guidance") if (v := getattr(self, k)) is not None}
        out = []
        for model in self.models:
            for prompt in self.prompts:
                for bars in self.bars:
                    for seed in self.seeds:
                        try:
                            request = GenerateRequest(
                                "render", prompt=prompt, bars=bars, bpm=bpm, meter=meter, start_bar=self.start_bar,
                                sample_rate=self.sample_rate, channels=self.channels, variations=self.variations,
                                seed=seed, steps=self.steps, key=self.key, loop=self.loop, priority="offline",
                                **sampling, **guide)
                        except ProtocolError as e:
                            raise JobError(f"{e.code}: {e.message}") from None
                        out.append(Batch(model, prompt_labels[prompt], request, self))
        names = [t.name for b in out for t in b.takes]
        if len(set(names)) != len(names):
            raise JobError("two takes of this job would get the same name: are two models or prompts repeated?")
        return out

    def describe(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


@dataclass(frozen=True)
class Take:
    """One file of the matrix: variation ``variation`` of ``batch``."""

    batch: "Batch"
    variation: int

    @property
    def name(self) -> str:
        r = self.batch.request
        return (f"{self.batch.prompt_label}_{slug(self.batch.model_name, 3, 24)}"
                f"_{r.bars}bar_seed{r.seed}_v{self.variation + 1}")

    @property
    def key(self) -> str:
        return self.batch.key + f":v{self.variation}"

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key a finished file of this take may record: :attr:`key`, then its earlier ones
        (:attr:`Batch.earlier_keys`)."""
        return (self.key, *(k + f":v{self.variation}" for k in self.batch.earlier_keys))

    @property
    def extension(self) -> str:
        return FORMATS[self.batch.job.format]


@dataclass(frozen=True)
class Batch:
    """One pass on the device: ``request.variations`` takes of one model, prompt, seed and length."""

    model: str                 # SOURCE or NAME=SOURCE, as the job gives it
    prompt_label: str
    request: GenerateRequest
    job: RenderJob = field(repr=False)

    @property
    def entry(self):
        """The model's name and source (``NAME=SOURCE``, else the name derived from the source)."""
        from stemd.models.pool import parse_model_arg

        return parse_model_arg(self.model)

    @property
    def model_name(self) -> str:
        return self.entry.name

    @property
    def takes(self) -> list[Take]:
        return [Take(self, v) for v in range(self.request.variations)]

    @property
    def key(self) -> str:
        """A hash of everything that shapes this batch's files."""
        return self._hash(self.request.describe())

    @property
    def earlier_keys(self) -> tuple[str, ...]:
        """The key stemd gave this batch before the generate keys :data:`NEWER_KEYS` existed (the first render
        folders, whose sidecars record it at their top level), when the request leaves those at their defaults:
        a rerun over such a folder keeps its takes."""
        described, defaults = self.request.describe(), GenerateRequest("_").describe()
        if any(described[k] != defaults[k] for k in NEWER_KEYS):
            return ()
        return (self._hash({k: v for k, v in described.items() if k not in NEWER_KEYS}),)

    def _hash(self, request: dict) -> str:
        j = self.job
        shape = {"model": self.model, "request": dict(request), "format": j.format, "lufs": j.lufs,
                 "stems": list(j.stems), "stems_model": j.stems_model}
        shape["request"].pop("request_id")
        return hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _prompt_labels(prompts) -> dict:
    """Each prompt's slug, with a short hash added where two different prompts share one."""
    slugs = [slug(p) for p in prompts]
    labels = {}
    for p, s in zip(prompts, slugs):
        labels[p] = s if slugs.count(s) == 1 else f"{s}-{hashlib.sha256(p.encode()).hexdigest()[:6]}"
    if len(set(prompts)) != len(prompts):
        raise JobError("a prompt is listed twice")
    return labels


# --- reading jobs -------------------------------------------------------------------------------
_LISTS = {"models": "model", "prompts": "prompt", "seeds": "seed", "bars": "bars", "stems": None}


def load_job_file(path: Path) -> dict:
    """The job table of a TOML file (top-level keys or a ``[render]`` table)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise JobError(f"no job file {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise JobError(f"{path} is not valid TOML: {e}") from None
    return data.get("render", data)


def make_job(values: dict, base: Optional[Path] = None) -> RenderJob:
    """A :class:`RenderJob` from a dict (a job file's table, then flags over it); unknown keys are refused."""
    known = {f.name for f in fields(RenderJob)}
    singular = {v: k for k, v in _LISTS.items() if v and v != k}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key in singular:  # model = "x" is models = ["x"]
            key, value = singular[key], [value]
        if key not in known:
            raise JobError(f"unknown job key {key!r}; known keys: {', '.join(sorted(known))}")
        if key in _LISTS:
            value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
            if key in ("seeds", "bars") and not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise JobError(f"{key} must be whole numbers, got {list(value)}")
        kwargs[key] = value
    if "bpm" in kwargs:
        kwargs["bpm"] = str(kwargs["bpm"])
    if base is not None and "out" in kwargs and not Path(kwargs["out"]).is_absolute():
        kwargs["out"] = str(base / kwargs["out"])  # a job file's out is relative to the file
    for name in ("sample_rate", "channels", "variations", "start_bar", "top_k", "steps"):
        if name in kwargs and (isinstance(kwargs[name], bool) or not isinstance(kwargs[name], int)):
            raise JobError(f"{name} must be a whole number, got {kwargs[name]!r}")
    return RenderJob(**kwargs)


def int_list(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]`` (for --seeds and --bars)."""
    try:
        return [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise JobError(f"expected whole numbers separated by commas, got {text!r}") from None
