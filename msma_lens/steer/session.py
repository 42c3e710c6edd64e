"""The hook session behind :func:`steer` and the :class:`SteeringRecord` it fills."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import tl
from ..capture.scales import Scales
from ..errors import ConfigError, HookError
from .edits import EditContext, EditPoint, Intervention, ResidualEdit, user_stacklevel
from .schedule import Schedule, check_phase, check_positions, describe_positions


# ----- the record ------------------------------------------------------------------------------------------
@dataclass
class SteeringRecord:
    """What a :func:`steer` block applied where.

    ``interventions[i]`` describes intervention i (kind, ``at``, parameters, resolved ``layers``, ``hooks``);
    ``forwards`` has one entry per forward pass: ``step``, ``columns`` ``[start, end)`` of the padded
    sequence seen, ``batch``, and ``edits`` ``{i: {"positions": absolute positions edited (union over rows),
    "rows": rows edited, "n": (row, position) pairs}}``. ``hook_calls`` counts calls per hook name.
    """

    interventions: list[dict] = field(default_factory=list)
    forwards: list[dict] = field(default_factory=list)
    hook_calls: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        ivs = "; ".join(f"{d.get('kind')} {d.get('scale') or ''} at={d.get('at')} layers {_span(d.get('layers'))}".replace("  ", " ")
                        for d in self.interventions[:4])
        more = f"; … +{len(self.interventions) - 4} more" if len(self.interventions) > 4 else ""
        edits = sum(e["n"] for f in self.forwards for e in f["edits"].values())
        return (f"SteeringRecord({len(self.interventions)} intervention(s): {ivs}{more};\n"
                f"    {len(self.forwards)} forward pass(es), {edits} edit(s), {len(self.warnings)} warning(s))")

    def applied(self, i: int | None = None) -> bool:
        return any((i is None and f["edits"]) or (i is not None and i in f["edits"]) for f in self.forwards)

    def steps(self, i: int = 0) -> list[int]:
        """Forward steps in which intervention ``i`` edited anything."""
        return sorted({f["step"] for f in self.forwards if i in f["edits"]})

    def positions(self, i: int = 0) -> list[int]:
        """Absolute positions intervention ``i`` edited (union over rows and steps)."""
        return sorted({p for f in self.forwards if i in f["edits"] for p in f["edits"][i]["positions"]})

    def layers(self, i: int = 0) -> list[int]:
        return list(self.interventions[i]["layers"])

    def n_edits(self, i: int = 0) -> int:
        """(row, position) pairs edited per layer, summed over forward passes."""
        return sum(f["edits"][i]["n"] for f in self.forwards if i in f["edits"])

    def to_dict(self) -> dict:
        return {"interventions": self.interventions, "forwards": self.forwards, "hook_calls": self.hook_calls,
                "warnings": self.warnings}

    def _warn(self, msg: str) -> None:
        self.warnings.append(msg)
        warnings.warn(msg, UserWarning, stacklevel=user_stacklevel())


def _span(layers: Sequence[int] | None) -> str:
    if not layers:
        return "-"
    ls = list(layers)
    return f"{ls[0]}-{ls[-1]}" if ls == list(range(ls[0], ls[-1] + 1)) and len(ls) > 1 else ",".join(map(str, ls))


# ----- the session behind steer() --------------------------------------------------------------------------
@dataclass
class _Bound:
    iv: Intervention
    index: int
    layers: tuple[int, ...]
    points: list[EditPoint]
    phase: str
    positions: tuple | None
    schedule: Schedule | None
    state: dict[tuple[int, str], dict] = field(default_factory=dict)
    cache: tuple = (-1, None, False)  # (forward id, mult, active)
    held: bool = False  # at="held": each point's edit replaces the previous point's
    carry: tuple = (-1, None)  # (forward id, float32 edit added at the previous point of this pass)


@dataclass
class TokenLayout:
    """A known prompt (set by :func:`msma_lens.steer.generate.generate`): ``mask`` ``[B, P]`` (1 = real token)."""

    mask: torch.Tensor
    prepend_bos: bool


class _Session:
    def __init__(self, model: Any, bound: list[_Bound], record: SteeringRecord, *, attention_mask: torch.Tensor | None,
                 sequence: TokenLayout | None, capture: dict[int, str] | None) -> None:
        self.model, self.bound, self.record = model, bound, record
        self.user_mask = attention_mask
        self.fixed = sequence
        self.encoder = tl.is_encoder(model)
        self.bos = sequence.prepend_bos if sequence is not None else tl.default_prepend_bos(model)
        self.capture_names = capture or {}
        self.captured: dict[int, list[torch.Tensor]] = {x: [] for x in self.capture_names}
        self.cap_end: dict[int, int] = {x: 0 for x in self.capture_names}
        self.fid = 0
        self.step: int | None = None
        self.prev: torch.Tensor | None = None
        if sequence is not None:
            self._new_sequence(sequence.mask)

    # -- sequence bookkeeping --
    def _new_sequence(self, mask: torch.Tensor) -> None:
        mask = mask.detach().to("cpu").bool()
        self.B, self.P = mask.shape
        self.mask = mask
        self.offsets = mask.long().argmax(1)          # leading pads (left padding)
        self.lengths = mask.long().sum(1)              # real prompt tokens
        self.step, self.end, self.prev = None, self.P, None
        for b in self.bound:
            b.state = {(p.layer, p.point): {} for p in b.points}
            b.carry = (-1, None)
        for x in self.cap_end:
            self.cap_end[x] = 0
            self.captured[x] = []

    def tracker(self, x: torch.Tensor, hook: Any) -> None:
        B, T = x.shape[0], x.shape[1]
        self.fid += 1
        if self.fixed is not None:
            if self.step is None:
                if (B, T) != (self.B, self.P):
                    raise HookError(f"the prompt pass has shape [{B}, {T}] but steering expected [{self.B}, {self.P}] "
                                    "(the model tokenised the prompts differently)")
                self.step = 0
            else:
                self.step += 1
                self.end += 1
                if B != self.B or T not in (1, self.end):
                    raise HookError(f"unexpected forward pass [{B}, {T}] at generation step {self.step} "
                                    f"(expected [{self.B}, 1] with the KV cache or [{self.B}, {self.end}] without)")
        else:
            cont = False
            if not self.encoder and self.step is not None and B == self.B:
                if T == 1:
                    cont = True  # KV-cached decoding step
                elif T == self.end + 1 and self.prev is not None and torch.equal(x[:, : self.end], self.prev):
                    cont = True  # uncached decoding step: same prefix plus one token
            if cont:
                self.step += 1
                self.end += 1
            else:
                m = self.user_mask
                if m is not None and tuple(m.shape) != (B, T):
                    raise ConfigError(f"attention_mask has shape {tuple(m.shape)} but the forward pass has [{B}, {T}]")
                self._new_sequence(m if m is not None else torch.ones(B, T, dtype=torch.bool))
                self.step = 0
            self.prev = x.detach() if T == self.end else None
        self.start = self.end - T
        cols = torch.arange(self.start, self.end)
        self.cols = cols
        self.abs_pos = cols[None, :] - self.offsets[:, None]
        in_prompt = cols < self.P
        self.real = torch.where(in_prompt[None, :], self.mask[:, cols.clamp(max=self.P - 1)], torch.ones(1, dtype=torch.bool))
        self.col_step = (cols - self.P + 1).clamp(min=0)
        self.in_prompt = in_prompt
        self.fwd = {"step": self.step, "columns": [self.start, self.end], "batch": B, "edits": {}}
        self.record.forwards.append(self.fwd)

    # -- per intervention, per forward --
    def _mult(self, b: _Bound) -> tuple[torch.Tensor | None, bool]:
        if b.cache[0] == self.fid:
            return b.cache[1], b.cache[2]
        sel = self.real.clone()
        if b.phase == "prompt":
            sel &= self.in_prompt[None, :]
        elif b.phase == "generated":
            sel &= ~self.in_prompt[None, :]
        if b.positions is not None:
            pos = self.abs_pos
            if b.positions[0] == "slice":
                lo, hi = b.positions[1], b.positions[2]
                sel &= (pos >= lo) & ((pos < hi) if hi is not None else torch.ones_like(sel))
            else:
                want = torch.tensor(b.positions[1:], dtype=torch.long)
                want = torch.where(want[None, :] < 0, self.lengths[:, None] + want[None, :], want[None, :])  # [B, k]
                sel &= (pos[:, :, None] == want[:, None, :]).any(-1) & (pos >= 0)
        m = sel.to(torch.float32)
        if b.schedule is not None:
            m = m * b.schedule.multiplier(self.col_step)[None, :]
        active = bool((m != 0).any())
        if active:
            hit = m != 0
            self.fwd["edits"][b.index] = {"positions": sorted(set(self.abs_pos[hit].tolist())),
                                          "rows": torch.nonzero(hit.any(1)).flatten().tolist(), "n": int(hit.sum())}
            mult = None if bool((m == 1).all()) else m
        else:
            mult = None
        b.cache = (self.fid, mult, active)
        return mult, active

    def _reference(self, b: _Bound, pt: EditPoint, x: torch.Tensor) -> torch.Tensor:
        st = b.state[(pt.layer, pt.point)]
        if "ref" not in st:
            if self.start != 0:
                raise HookError(f"{type(b.iv).__name__}(relative=True) needs the prompt pass to measure residual norms "
                                f"at {pt.name}, but the first pass it saw started at column {self.start}")
            use = self.real & self.in_prompt[None, :]
            if self.bos:
                use &= self.abs_pos >= 1
            use = torch.where(use.any(1, keepdim=True), use, self.real).to(x.device)
            norms = x.detach().float().norm(dim=-1)
            st["ref"] = (norms * use).sum(1) / use.sum(1).clamp(min=1)
        return st["ref"]

    def make_hook(self, entries: list[tuple[_Bound, EditPoint]], captures: list[int]):
        def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
            if self.step is None:
                raise HookError("a steering hook fired before the first block's input hook; "
                                "start_at_layer / partial forward passes are not supported inside steer()")
            for b, pt in entries:
                mult, active = self._mult(b)
                key = (pt.layer, pt.point)
                # held: apply to the stream without this intervention's edit from its previous point in this pass
                prev = b.carry[1] if b.held and pt.point != "entry" and b.carry[0] == self.fid else None
                base = x if prev is None else x.float() - prev
                ref = self._reference(b, pt, base) if b.iv.needs_reference and self.step == 0 else b.state[key].get("ref")
                if not active:
                    continue
                ctx = EditContext(pt.layer, self.step, mult, self.abs_pos, ref, b.state[key], pt.point)
                y = b.iv.apply(base, ctx)
                if b.held:
                    b.carry = (self.fid, y.float() - base.float())
                x = y if y.dtype == x.dtype else y.to(x.dtype)
            for layer in captures:
                self._capture(layer, x)
            return x

        return hook

    def _capture(self, layer: int, x: torch.Tensor) -> None:
        done = self.cap_end[layer]
        if self.end <= done:
            return
        new = x[:, done - self.start:] if done > self.start else x
        self.captured[layer].append(new.detach().clone())
        self.cap_end[layer] = self.end


def _bind(model: Any, interventions: Sequence[Intervention], scales: Scales, phase: str, positions: tuple | None,
          schedule: Schedule | None) -> list[_Bound]:
    out = []
    for i, iv in enumerate(interventions):
        if not isinstance(iv, Intervention):
            raise ConfigError(f"intervention {i} is a {type(iv).__name__}, expected Translate/Rescale/GaussianNoise/AttentionEdit/Ablate")
        layers = iv.resolve_layers(model, scales)
        iv.check(model, layers)
        out.append(_Bound(iv, i, layers, iv.points(model, layers), iv.phase or phase,
                          iv._positions if iv.positions is not None else positions,
                          iv.schedule if iv.schedule is not None else schedule,
                          held=isinstance(iv, ResidualEdit) and iv.at == "held"))
    return out


def flatten_interventions(interventions: tuple) -> list[Intervention]:
    out: list = []
    for iv in interventions:
        if isinstance(iv, (list, tuple)):
            out.extend(iv)
        elif iv is not None:
            out.append(iv)
    return out


def _never_warnings(bound: list[_Bound], *, encoder: bool, max_steps: int | None = None,
                    prompt_lengths: Sequence[int] | None = None) -> list[tuple[int, str]]:
    """(intervention index, reason) for interventions that can never apply, knowable before running."""
    out: list[tuple[int, str]] = []
    for b in bound:
        msgs: list[str] = []
        name = f"intervention {b.index} ({type(b.iv).__name__})"
        sch, pos = b.schedule, b.positions
        if b.phase == "generated" and encoder:
            msgs.append(f"{name} has phase='generated', but encoder models never generate")
        if b.phase == "generated" and max_steps is not None and max_steps < 2:
            msgs.append(f"{name} has phase='generated', but with max_new_tokens={max_steps} no generated token is fed back")
        if sch is not None:
            if b.phase == "prompt" and sch.start > 0:
                msgs.append(f"{name}: phase='prompt' runs at step 0 only, but the schedule starts at step {sch.start}")
            if b.phase == "generated" and sch.stop is not None and sch.stop <= 1:
                msgs.append(f"{name}: phase='generated' starts at step 1, but the schedule stops before step {sch.stop}")
            if max_steps is not None and sch.start >= max_steps:
                msgs.append(f"{name}: the schedule starts at step {sch.start}, but generation runs steps 0..{max_steps - 1}")
        if pos is not None and pos[0] == "list":
            ps = pos[1:]
            if b.phase == "generated" and all(p < 0 for p in ps):
                msgs.append(f"{name}: negative positions {list(ps)} index prompt tokens, but phase='generated'")
            if prompt_lengths is not None:
                lo, hi = min(prompt_lengths), max(prompt_lengths)
                if b.phase == "generated" and all(0 <= p < lo for p in ps):
                    msgs.append(f"{name}: positions {list(ps)} lie inside every prompt (>= {lo} tokens), but phase='generated'")
                if b.phase == "prompt" and all(p >= hi for p in ps):
                    msgs.append(f"{name}: positions {list(ps)} lie beyond every prompt (<= {hi} tokens), but phase='prompt'")
                if max_steps is not None and all(p >= hi + max_steps - 1 for p in ps):
                    msgs.append(f"{name}: positions {list(ps)} are never reached (prompts <= {hi} tokens + {max_steps - 1} fed-back tokens)")
        if pos is not None and pos[0] == "slice" and prompt_lengths is not None:
            if b.phase == "prompt" and pos[1] >= max(prompt_lengths):
                msgs.append(f"{name}: positions from {pos[1]} lie beyond every prompt, but phase='prompt'")
        out.extend((b.index, m) for m in msgs)
    return out


@contextlib.contextmanager
def steering_session(model: Any, interventions: Sequence[Intervention], *, scales: Any = None, phase: str = "both",
           positions: Any = None, schedule: Any = None, attention_mask: torch.Tensor | None = None,
           sequence: TokenLayout | None = None, capture_layers: Sequence[int] = (), capture_site: str = "resid_post",
           max_steps: int | None = None, prompt_lengths: Sequence[int] | None = None) -> Iterator[tuple[SteeringRecord, _Session]]:
    tl.check_model(model)
    scales = Scales.coerce(scales, tl.n_layers(model))
    check_phase(phase)
    pos = check_positions(positions)
    sch = Schedule.coerce(schedule)
    if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor) or attention_mask.ndim != 2):
        raise ConfigError("attention_mask must be a [B, T] tensor (1 = real token)")
    bound = _bind(model, list(interventions), scales, phase, pos, sch)
    record = SteeringRecord()
    for b in bound:
        record.interventions.append({**b.iv.describe(), "layers": list(b.layers), "hooks": [p.name for p in b.points],
                                     "phase": b.phase, "positions": describe_positions(b.positions),
                                     "schedule": b.schedule.to_dict() if b.schedule else None})
    never = _never_warnings(bound, encoder=tl.is_encoder(model), max_steps=max_steps, prompt_lengths=prompt_lengths)
    for _, msg in never:
        record._warn(msg)
    cap = {x: tl.resid_name(model, x, capture_site) for x in capture_layers}
    session = _Session(model, bound, record, attention_mask=attention_mask, sequence=sequence, capture=cap)

    by_name: dict[str, tuple[list, list]] = {}
    for b in bound:
        for p in b.points:
            by_name.setdefault(p.name, ([], []))[0].append((b, p))
    for x, n in cap.items():
        by_name.setdefault(n, ([], []))[1].append(x)
    tracker_name = tl.resid_name(model, 0, "resid_pre")
    fwd_hooks = [(tracker_name, session.tracker)]
    fwd_hooks += [(n, session.make_hook(e, c)) for n, (e, c) in by_name.items()]
    with tl.scoped_hooks(model, fwd_hooks, require_fired=False) as calls:
        yield record, session
    record.hook_calls = dict(calls.calls)
    if session.fid > 0:
        unfired = [n for n, c in calls.calls.items() if c == 0]
        if unfired:
            raise HookError(f"steering hook(s) {unfired} never fired although {session.fid} forward pass(es) ran "
                            "(stop_at_layer below the scale, or a model that bypasses these hook points)")
        warned = {i for i, _ in never}
        for b in bound:
            if b.index not in warned and not record.applied(b.index):
                record._warn(f"intervention {b.index} ({type(b.iv).__name__} on layers {list(b.layers)}) was never applied in "
                             f"{session.fid} forward pass(es): check phase={b.phase!r}, positions and schedule")


@contextlib.contextmanager
def steer(model: Any, *interventions: Intervention, scales: Any = None, phase: str = "both", positions: Any = None,
          schedule: Schedule | Mapping | tuple | None = None, attention_mask: torch.Tensor | None = None) -> Iterator[SteeringRecord]:
    """Apply interventions to every forward pass (and ``model.generate`` step) inside the block.

    ``scales``: a :class:`~msma_lens.Scales` spec (default: thirds of the depth). ``phase``: ``"prompt"``,
    ``"generated"`` or ``"both"``; ``positions``: absolute positions (see the module docstring); ``schedule``:
    a :class:`Schedule`. ``attention_mask`` ``[B, T]`` describes padding of the prompt passes inside the block
    (needed for left-padded token batches so positions and norms skip the pads).

    A forward pass continues the current sequence when it is a KV-cached step (one new token, same batch) or
    an uncached step (the same inputs plus one token); anything else starts a new sequence at step 0. A
    genuinely new one-token prompt right after a pass is therefore read as a decoding step: use
    :func:`msma_lens.steer.generate.generate` or separate ``steer`` blocks when that matters.

    Hooks go through ``model.hooks`` (removed on exit, also on exceptions mid-generation) and compose with
    hooks the user attached. Yields a :class:`SteeringRecord`; warns when an intervention can never apply or
    was never applied.
    """
    with steering_session(model, flatten_interventions(interventions), scales=scales, phase=phase, positions=positions, schedule=schedule,
                attention_mask=attention_mask) as (record, _):
        yield record

