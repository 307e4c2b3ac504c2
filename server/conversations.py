"""Conversations: stored messages in order, scoped to an org, optionally about a model
and a fine-tuning job. The control plane only keeps them (it generates nothing); Helix's
sessions are conversations, so the bridge that serves them holds no state.

A conversation's row holds its message (without messages); each message is a row of
`conversation_messages` keyed by (conversation, sequence), so appending never rewrites
what came before and a long conversation is paged, never read whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import sqlite_utils

from server import lifecycle, registry
from server.errors import InvalidArgument, NotFound
from server.ids import new_id, now, timestamp
from server.store import pages, records
from tunewire.v1 import conversations_pb2

Conversation = conversations_pb2.Conversation
Message = conversations_pb2.ConversationMessage

TABLE = "conversations"
ROLES = ("system", "user", "assistant", "tool")
MAX_TITLE = MAX_MODEL = 256
MAX_PAIRS, MAX_KEY = 16, 64
MAX_VALUE = 512  # a conversation's metadata values, as a job's
MAX_MESSAGE_VALUE = 4096  # a message's: room for a list of file names
MAX_CONTENT = 65_536
MAX_MESSAGES_PER_CALL = 1000
MAX_MESSAGES = 10_000
MESSAGE_PAGE = 100


def _metadata(field: str, metadata: Mapping[str, str], max_value: int) -> list[tuple[str, str]]:
    problems = []
    if len(metadata) > MAX_PAIRS:
        problems.append((field, f"at most {MAX_PAIRS} pairs"))
    for key, value in metadata.items():
        if not 1 <= len(key) <= MAX_KEY:
            problems.append((f"{field}[{key[:MAX_KEY]!r}]", f"keys must be 1-{MAX_KEY} characters"))
        if len(value) > max_value:
            problems.append((f"{field}[{key!r}]", f"values must be at most {max_value} characters"))
    return problems


def check_messages(field: str, messages: Iterable[Message]) -> list[tuple[str, str]]:
    """Every problem with messages to store, each naming its message."""
    problems = []
    for i, message in enumerate(messages):
        at = f"{field}[{i}]"
        if message.role not in ROLES:
            problems.append((f"{at}.role", f"must be one of {', '.join(ROLES)}"))
        if len(message.content) > MAX_CONTENT:
            problems.append((f"{at}.content", f"at most {MAX_CONTENT} characters"))
        problems += _metadata(f"{at}.metadata", message.metadata, MAX_MESSAGE_VALUE)
    return problems


def check_create(db: sqlite_utils.Database, org: str, conversation: Conversation) -> None:
    """Every problem with a CreateConversation request, reported together."""
    problems = []
    if len(conversation.title) > MAX_TITLE:
        problems.append(("conversation.title", f"at most {MAX_TITLE} characters"))
    if len(conversation.model) > MAX_MODEL:
        problems.append(("conversation.model", f"at most {MAX_MODEL} characters"))
    if conversation.model.startswith("ft:") and not registry.fine_tuned(
        db, org, conversation.model
    ):
        # Base models are everyone's; a fine-tuned one is its org's alone.
        raise NotFound("model", conversation.model)
    if conversation.job_id:
        try:
            lifecycle.load(db, conversation.job_id, org)
        except NotFound:
            problems.append(("conversation.job_id", f"no job {conversation.job_id[:128]!r}"))
    problems += _metadata("conversation.metadata", conversation.metadata, MAX_VALUE)
    if len(conversation.messages) > MAX_MESSAGES_PER_CALL:
        problems.append(("conversation.messages", f"at most {MAX_MESSAGES_PER_CALL}"))
    else:
        problems += check_messages("conversation.messages", conversation.messages)
    if problems:
        raise InvalidArgument(problems)


def get(db: sqlite_utils.Database, org: str, conversation_id: str) -> Conversation:
    return records.get(db, TABLE, Conversation, org, conversation_id)


def _save(db: sqlite_utils.Database, conversation: Conversation) -> None:
    db.execute(
        "UPDATE conversations SET proto = ? WHERE id = ?",
        [conversation.SerializeToString(), conversation.id],
    )


def create(db: sqlite_utils.Database, org: str, request: Conversation) -> Conversation:
    """Store a checked conversation and its first messages; returns it with them.
    In a write transaction."""
    conversation = Conversation(
        id=new_id("conv"),
        title=request.title,
        model=request.model,
        job_id=request.job_id,
        metadata=dict(request.metadata),
        create_time=timestamp(now()),
        organization=org,
    )
    conversation.update_time.CopyFrom(conversation.create_time)
    db[TABLE].insert(
        {
            "id": conversation.id,
            "org": org,
            "created_at": conversation.create_time.ToNanoseconds() / 1e9,
            "job_id": conversation.job_id or None,
            "proto": conversation.SerializeToString(),
        }
    )
    stored = append(db, conversation, request.messages)
    conversation.messages.extend(stored)
    return conversation


def append(
    db: sqlite_utils.Database, conversation: Conversation, messages: Iterable[Message]
) -> list[Message]:
    """Store checked messages after the conversation's last; returns them as stored.
    In a write transaction (the conversation read in it)."""
    messages = list(messages)
    if conversation.message_count + len(messages) > MAX_MESSAGES:
        raise InvalidArgument.field(
            "messages",
            f"a conversation holds at most {MAX_MESSAGES} messages; "
            f"this one has {conversation.message_count}",
        )
    if not messages:
        return []
    at = timestamp(now())
    stored = []
    for message in messages:
        conversation.message_count += 1
        kept = Message(
            id=new_id("cmsg"),
            role=message.role,
            content=message.content,
            metadata=dict(message.metadata),
            sequence=conversation.message_count,
            create_time=at,
        )
        stored.append(kept)
    db.conn.executemany(
        "INSERT INTO conversation_messages (conversation_id, sequence, proto) VALUES (?, ?, ?)",
        [(conversation.id, m.sequence, m.SerializeToString()) for m in stored],
    )
    conversation.last_message_id = stored[-1].id
    conversation.update_time.CopyFrom(at)
    _save(db, conversation)
    return stored


def messages_page(
    db: sqlite_utils.Database, conversation_id: str, requested: int, token: str
) -> tuple[list[Message], str]:
    """One page of a conversation's messages, oldest first, and the next token: a seek
    on (conversation, sequence)."""
    size = pages.page_size(requested, MESSAGE_PAGE)
    after = 0
    if token:
        (after,) = pages.decode(token, 1)
        if not isinstance(after, int):
            raise InvalidArgument.field("page_token", "is not a token this server issued")
    rows = db.execute(
        "SELECT sequence, proto FROM conversation_messages"
        " WHERE conversation_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
        [conversation_id, after, size + 1],
    ).fetchall()
    found = [Message.FromString(proto) for _, proto in rows[:size]]
    return found, pages.encode([rows[size - 1][0]]) if len(rows) > size else ""


def delete(db: sqlite_utils.Database, conversation_id: str) -> None:
    """The conversation and (by the foreign key's cascade) its messages. In a write
    transaction."""
    db.execute("DELETE FROM conversations WHERE id = ?", [conversation_id])
