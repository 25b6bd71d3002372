"""``reachsafe sim view``: one episode as an animation, robot camera beside a top-down view.

The top-down panel draws the path so far, marks every step that cost (red ring), each goal
reached (green ring) and the current goal (dark green cross, also after it faded from view); a caption gives step, return and cost. The policy is a bundle's agent graph
run through ``reachsafe.edge_runtime.inference.AgentSession`` (what the robot would run, greedy), or a
scripted policy. GIF needs only Pillow; MP4 needs an ``ffmpeg`` binary on PATH.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
from PIL import Image, ImageDraw

from reachsafe.sim_bridge.env import NavState, SafeNavEnv
from reachsafe.sim_bridge.policies import make_policy
from reachsafe.sim_bridge.registration import register_envs

log = logging.getLogger(__name__)

PANEL = 256
Policy = Callable[[np.ndarray, NavState], np.ndarray]


@dataclass(frozen=True)
class ViewConfig:
    task: str
    out: Path
    split: str = "train"
    seed: int = 0
    steps: int = 300
    policy: str = "careful"  # scripted policy when no bundle is given
    bundle: Path | None = None
    keys: Path | None = None  # trusted signing keys to verify the bundle with
    every: int = 2  # keep every n-th step as a frame


def bundle_policy(bundle_dir: Path, keys: Path) -> Policy:
    """The bundle's online action, greedy, through the runtime's own inference wrapper."""
    from reachsafe.edge_runtime.inference import AgentSession
    from reachsafe.protocol.bundle import load_bundle
    from reachsafe.protocol.keys import load_trusted_keys

    session = AgentSession.from_bundle(load_bundle(bundle_dir, load_trusted_keys(keys)))
    return lambda image, state: np.asarray(session.act(image).a_on, dtype=np.float32)


def scripted_policy(name: str, seed: int) -> Policy:
    policy = make_policy(name)
    policy.reset(np.random.default_rng(seed))
    return lambda image, state: policy.act(state)


class _TopDown:
    """World (metres) to top-down pixel mapping; matches ``Scene.top_down``'s camera at the floor."""

    def __init__(self, arena_half: float) -> None:
        self.half = arena_half + 0.15

    def px(self, xy: np.ndarray) -> tuple[float, float]:
        return (
            (float(xy[0]) + self.half) / (2 * self.half) * PANEL,
            (self.half - float(xy[1])) / (2 * self.half) * PANEL,
        )


def _frame(
    camera: np.ndarray,
    top: np.ndarray,
    mapper: _TopDown,
    path: list,
    costs: list,
    goals: list,
    goal_xy: np.ndarray,
    caption: str,
) -> Image.Image:
    canvas = Image.new("RGB", (2 * PANEL, PANEL + 22), (255, 255, 255))
    canvas.paste(Image.fromarray(camera).resize((PANEL, PANEL), Image.NEAREST), (0, 0))
    panel = Image.fromarray(top)
    draw = ImageDraw.Draw(panel)
    if len(path) > 1:
        draw.line([mapper.px(p) for p in path], fill=(230, 120, 0), width=2)
    for xy, colour in [(p, (220, 0, 0)) for p in costs] + [(p, (0, 170, 0)) for p in goals]:
        x, y = mapper.px(xy)
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), outline=colour, width=2)
    gx, gy = mapper.px(goal_xy)  # the current goal, also once it has faded from the camera
    draw.line((gx - 5, gy - 5, gx + 5, gy + 5), fill=(0, 120, 0), width=2)
    draw.line((gx - 5, gy + 5, gx + 5, gy - 5), fill=(0, 120, 0), width=2)
    canvas.paste(panel, (PANEL, 0))
    ImageDraw.Draw(canvas).text((6, PANEL + 5), caption, fill=(0, 0, 0))
    return canvas


def render_episode(cfg: ViewConfig, policy: Policy) -> tuple[list[Image.Image], dict[str, float]]:
    register_envs()
    env = gym.make(
        cfg.task, split=cfg.split, obs_mode="image", episode_steps=cfg.steps, render_mode="rgb_array"
    )
    sim: SafeNavEnv = env.unwrapped  # type: ignore[assignment]
    obs, _ = env.reset(seed=cfg.seed)
    mapper = _TopDown(sim.params.arena_half)
    path, costs, goals, frames = [sim.nav_state().xy], [], [], []
    ret = cost = 0.0
    for t in range(cfg.steps):
        state = sim.nav_state()
        goal_before = state.goal_xy
        obs, reward, terminated, truncated, info = env.step(policy(obs, state))
        ret, cost = ret + reward, cost + info["cost"]
        xy = sim.nav_state().xy
        path.append(xy)
        if info["cost"] > 0:
            costs.append(xy)
        if info["goal_met"]:
            goals.append(goal_before)
        if t % cfg.every == 0 or terminated or truncated:
            caption = f"{cfg.task} [{cfg.split}]  step {t + 1}  return {ret:6.2f}  cost {cost:4.0f}"
            top = env.render()
            frames.append(_frame(obs, top, mapper, path, costs, goals, sim.nav_state().goal_xy, caption))
        if terminated or truncated:
            break
    env.close()
    return frames, {"return": ret, "cost": cost, "goals": float(len(goals)), "steps": float(len(path) - 1)}


def save_animation(frames: list[Image.Image], out: Path, fps: float) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".gif":
        frames[0].save(out, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
        return out
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"{out}: use a .gif or .mp4 file name")
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("writing .mp4 needs ffmpeg on PATH (e.g. `apt-get install ffmpeg`); or use .gif")
    w, h = frames[0].size
    cmd = [ffmpeg, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}"]
    cmd += ["-r", str(fps), "-i", "-", "-pix_fmt", "yuv420p", "-vcodec", "libx264", str(out)]
    subprocess.run(cmd, input=b"".join(f.tobytes() for f in frames), check=True)
    return out


def view(cfg: ViewConfig) -> dict[str, float]:
    """Render one episode to ``cfg.out``; returns its return, cost, goals and steps."""
    if cfg.bundle is not None:
        if cfg.keys is None:
            raise ValueError(
                "--bundle needs --keys DIR (the trainer's signing.pub): unsigned bundles are never run"
            )
        policy = bundle_policy(cfg.bundle, cfg.keys)
    else:
        policy = scripted_policy(cfg.policy, cfg.seed)
    frames, summary = render_episode(cfg, policy)
    save_animation(frames, cfg.out, fps=20.0 / cfg.every)
    log.info("wrote %d frames to %s", len(frames), cfg.out)
    return summary
