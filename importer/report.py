"""The import report: what the export holds (EXPECTED.md's names) and what a run wrote.

Per-conversation stats are summed in `Totals`; the writer stores each
conversation's stats next to its progress row, so the final report of a resumed
import covers the whole export, not only the last run's share.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from .export import ConversationPlan

MAX_KEYS = ("max_body_utf8_bytes",)


def plan_stats(plan: ConversationPlan) -> dict[str, Any]:
    """The JSON-able stats of one conversation, as stored in import_conversations."""
    return {
        "counts": dict(plan.stats),
        "unknown_identities": sorted(plan.unknown_identities),
        "missing_media": plan.missing_media,
        "issues": plan.issues,
    }


SAMPLE = 100  # list entries kept inside the JSON report; the full lists go to side files


class Totals:
    """Sums of per-conversation stats; long lists stream to side files, not memory."""

    def __init__(self, spill_stem: Path | None = None) -> None:
        self.counts: Counter[str] = Counter()
        self.unknown: set[str] = set()
        self.missing_media: list[str] = []
        self.issues: list[dict[str, str]] = []
        self.n_missing = self.n_issues = 0
        self.files: dict[str, str] = {}
        self._missing_f: TextIO | None = None
        self._issues_f: TextIO | None = None
        if spill_stem is not None:
            mpath = spill_stem.with_name(spill_stem.name + ".missing-media.txt")
            ipath = spill_stem.with_name(spill_stem.name + ".issues.jsonl")
            self._missing_f = open(mpath, "w", encoding="utf-8")
            self._issues_f = open(ipath, "w", encoding="utf-8")
            self.files = {"missing_media_sids": str(mpath), "issues": str(ipath)}

    def add(self, stats: dict[str, Any]) -> None:
        for k, v in stats.get("counts", {}).items():
            if k in MAX_KEYS:
                self.counts[k] = max(self.counts[k], v)
            else:
                self.counts[k] += v
        self.unknown.update(stats.get("unknown_identities", ()))
        for sid in stats.get("missing_media", ()):
            self.n_missing += 1
            if len(self.missing_media) < SAMPLE:
                self.missing_media.append(sid)
            if self._missing_f is not None:
                self._missing_f.write(sid + "\n")
        for issue in stats.get("issues", ()):
            self.add_issue(issue)

    def add_issue(self, issue: dict[str, str]) -> None:
        self.n_issues += 1
        if len(self.issues) < SAMPLE:
            self.issues.append(issue)
        if self._issues_f is not None:
            self._issues_f.write(json.dumps(issue, ensure_ascii=False) + "\n")

    def close(self) -> None:
        for f in (self._missing_f, self._issues_f):
            if f is not None:
                f.close()


def build_report(totals: Totals, export_stats: Counter[str], export_issues: list[dict[str, str]],
                 unknown_extra: set[str], run: dict[str, Any]) -> dict[str, Any]:
    for issue in export_issues:
        totals.add_issue(issue)
    totals.close()
    c = Counter(totals.counts)
    c.update({k: v for k, v in export_stats.items()})
    unknown = sorted(totals.unknown | unknown_extra)
    bad = {
        "conversations": c["bad_attributes_conversations"],
        "participants": c["bad_attributes_participants"],
        "messages": c["bad_attributes_messages"],
        "users": c["bad_attributes_users"],
    }
    bad["total"] = sum(bad.values())
    counts = {
        "conversation_records_in_pages": c["conversation_records_in_pages"],
        "duplicate_conversation_records": c["duplicate_conversation_records"],
        "chats": c["chats"],
        "chats_by_type": {"private": c["chats_private"], "group": c["chats_group"]},
        "chats_by_status": {"active": c["chats_active"], "archived": c["chats_archived"]},
        "chats_with_order": c["chats_with_order"],
        "chats_without_messages": c["chats_without_messages"],
        "orders": c["orders"],
        "users_csv_rows": c["users_csv_rows"],
        "twilio_users": c["twilio_users"],
        "participant_records": c["participant_records"],
        "chat_participants": c["chat_participants"],
        "chat_participants_by_role": {r: c["chat_participants_" + r]
                                      for r in ("owner", "admin", "member")},
        "participants_unknown_identity": c["participants_unknown_identity"],
        "participants_without_identity": c["participants_without_identity"],
        "read_horizons_on_index_gap": c["read_horizons_on_index_gap"],
        "message_records_in_pages": c["message_records_in_pages"],
        "duplicate_message_records": c["duplicate_message_records"],
        "messages": c["messages"],
        "messages_by_type": {t: c["messages_" + t]
                             for t in ("text", "image", "audio", "file", "system")},
        "messages_edited": c["messages_edited"],
        "messages_deleted": 0,
        "messages_empty_body": c["messages_empty_body"],
        "messages_by_unknown_author": c["messages_by_unknown_author"],
        "messages_by_departed_participant": c["messages_by_departed_participant"],
        "missing_indices_below_last": c["missing_indices_below_last"],
        "attachments": c["attachments"],
        "media_files_present": c["media_files_present"],
        "missing_media_files": c["missing_media_files"],
        "delivery_receipts": c["delivery_receipts"],
        "unknown_identities": len(unknown),
        "bad_attribute_strings": bad,
        "bodies_with_nul_char": c["bodies_with_nul_char"],
        "bodies_with_literal_backslash_u0000": c["bodies_with_literal_backslash_u0000"],
        "bodies_over_1600_chars": c["bodies_over_1600_chars"],
        "max_body_utf8_bytes": c["max_body_utf8_bytes"],
    }
    other = {k: c[k] for k in (
        "bodies_over_32k_bytes", "messages_with_legacy_media_shape", "invalid_message_records",
        "invalid_conversation_records", "bad_pages", "bad_timestamps", "media_with_invalid_sid",
        "chats_with_order_not_in_csv", "users_csv_bad_rows", "orders_csv_bad_rows",
        "users_csv_duplicate_identities", "users_csv_unknown_roles", "orders_csv_duplicate_ids",
        "message_strings_rewritten", "duplicate_message_indices",
        "twilio_users_not_in_csv", "replies", "replies_bad_index", "replies_to_later_index",
        "replies_target_not_in_export",
    )}
    return {
        "counts": counts,
        "other_counts": other,
        "unknown_identity_list": unknown,
        "missing_media_sids": totals.missing_media,
        "missing_media_sids_total": totals.n_missing,
        "issues": totals.issues,
        "issues_total": totals.n_issues,
        "full_lists": totals.files,
        "run": run,
    }


def render_text(report: dict[str, Any]) -> str:
    """A short human summary (no message text, no identities beyond counts)."""
    c = report["counts"]
    run = report["run"]
    lines = ["Twilio import report" + (" (dry run: nothing written)" if run.get("dry_run") else "")]

    def flat(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                flat(f"{prefix}.{k}" if prefix else k, v)
        else:
            lines.append(f"  {prefix:<48} {value}")

    lines.append(" export:")
    flat("", c)
    lines.append(" other findings:")
    flat("", {k: v for k, v in report["other_counts"].items() if v})
    lines.append(" this run:")
    flat("", run)
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, ensure_ascii=False, indent=1)
        f.write("\n")
