"""`tensor-surgery investigate`: the agent on the command line, or its tools by hand.

The question's steps go to stderr as they happen (tool calls, results, a progress bar for long
scans); the answer goes to stdout. The conversation is saved in the journal database, like the
web app's, and `--continue ID` carries on with it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import SurgeryError
from ..settings import Settings
from .tools import REGISTRY, InvalidArguments, ToolContext, parse_arguments, run_tool


def list_tools(as_json: bool) -> int:
    tools = [t.describe() for t in REGISTRY.values()]
    if as_json:
        click.echo(json.dumps({"tools": tools}, indent=2))
        return 0
    for t in tools:
        props = t["parameters"]["properties"]
        required = set(t["parameters"].get("required", ()))
        args = ", ".join(f"{k}{'' if k in required else '?'}: {v.get('type', 'any')}" for k, v in props.items())
        click.echo(f"{t['name']}({args})\n    {t['description']}")
    return 0


def _journal(settings: Settings):
    from ..surgery.journal import Journal

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Journal(settings.resolved_database_url)


def _workspace(settings: Settings, model_path: Path, journal):
    """The model, with the edits staged in the app (same DATA_DIR) as its staged view: what the
    tools' view=staged and propose_edit's preview see."""
    from ..surgery.staging import StagedOverlays
    from ..workspace import Workspace

    ws = Workspace(settings, overlay_provider=StagedOverlays(journal))
    model = ws.open(model_path, guarded=False)  # the user named it on their own command line
    return ws, model


def run_tool_by_hand(model_path: Path, name: str, raw_args: str, as_json: bool) -> int:
    settings = Settings()
    try:
        args = parse_arguments(raw_args)
    except InvalidArguments as e:
        raise InvalidArguments(f"--args: {e.message}", field="args") from None
    journal = _journal(settings)
    try:
        ws, model = _workspace(settings, model_path, journal)
        try:
            result = run_tool(ToolContext(ws, model, progress=_Bars().progress), name, args)
        finally:
            ws.close()
    finally:
        journal.close()
    click.echo(json.dumps({"tool": name, "result": result} if as_json else result, indent=2, default=str))
    return 0


class _Bars:
    """One tqdm bar per running tool call that reports progress."""

    def __init__(self) -> None:
        self.bar = None

    def progress(self, what: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=what[:40], file=sys.stderr, disable=None, leave=False)
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def ask(model_path: Path, question: str, conversation_id: int | None, as_json: bool) -> int:
    from .llm import LLMConfig
    from .session import Investigator
    from .store import ConversationStore

    settings = Settings()
    config = LLMConfig.from_settings(settings)  # refuses before opening anything when no LLM is set
    journal = _journal(settings)
    ws, model = _workspace(settings, model_path, journal)
    investigator = Investigator(ws, ConversationStore(journal.engine), settings)
    events: list[dict] = []
    bars = _Bars()

    def show(ev: dict) -> None:
        events.append(ev)
        if as_json:
            return
        t = ev["type"]
        if t == "tool_call":
            click.echo(f"→ {ev['name']}({_short(ev['arguments'])})", err=True)
        elif t == "progress":
            bars.progress(ev["what"], ev["done"], ev["total"])
        elif t == "tool_result":
            bars.close()
            body = _short(ev["result"], 160) if ev["ok"] else f"{ev['error']['code']}: {ev['error']['message']}"
            click.echo(f"  {'✓' if ev['ok'] else '✗'} {ev['ms']} ms: {body}", err=True)
            if ev["ok"] and ev["name"] == "propose_edit":
                click.echo(f"  proposed (not staged): {ev['result']['preview']['description']}", err=True)
        elif t == "retry":
            click.echo(f"  the LLM {ev['reason']}; retry {ev['attempt']} of {ev['retries']} in {ev['wait_s']} s",
                       err=True)
        elif t == "note":
            click.echo(ev["content"], err=True)
        elif t == "answer":
            click.echo(ev["content"])
        elif t == "error":
            click.echo(f"error: {ev['message']}", err=True)

    try:
        turn = investigator.start(model, question, conversation_id, config)
        answer = investigator.run(turn, show)
    finally:
        bars.close()
        ws.close()
        journal.close()
    if as_json:
        click.echo(json.dumps({"conversation_id": turn.conversation_id, "answer": answer,
                               "events": [e for e in events if e["type"] != "progress"]}, indent=2, default=str))
    elif answer is not None:
        click.echo(f"(conversation #{turn.conversation_id}; continue it with --continue {turn.conversation_id})",
                   err=True)
    return 0 if answer is not None else 1


def _short(value, n: int = 100) -> str:
    text = json.dumps(value, default=str)
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    return text if len(text) <= n else text[: n - 1] + "…"


def investigate(model: Path, question: str | None, tool: str | None, args: str, show_tools: bool,
                conversation_id: int | None, as_json: bool) -> int:
    if show_tools:
        return list_tools(as_json)
    if tool:
        if question:
            raise SurgeryError("give either a QUESTION or --tool NAME, not both", field="tool")
        return run_tool_by_hand(model, tool, args, as_json)
    if not question:
        raise SurgeryError('give a QUESTION (e.g. "Which tensors look anomalous?"), or --tool NAME --args JSON',
                           field="question")
    return ask(model, question, conversation_id, as_json)
