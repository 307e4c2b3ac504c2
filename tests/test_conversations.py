"""ConversationService against a real server: conversations are stored with their
messages in order, continued, paged, counted, scoped to their org and deleted with
their messages; bad requests name every bad field."""

from __future__ import annotations

import sqlite3

import grpc
from conftest import Authed, Org, Server, every_page, fails, invalid
from test_bridge import Stack

from tunewire.v1 import conversations_pb2, conversations_pb2_grpc

Conversation = conversations_pb2.Conversation
Message = conversations_pb2.ConversationMessage
Code = grpc.StatusCode

# The `rest` stack (one per session).
pytest_plugins = ["test_bridge"]


def stub(org: Org) -> Authed:
    channel = org.client.channel
    return Authed(conversations_pb2_grpc.ConversationServiceStub(channel), org.client.metadata)


def test_a_conversation_is_stored_continued_and_deleted(server: Server) -> None:
    mine, theirs = stub(server.default), stub(server.other)
    created = mine.CreateConversation(
        conversations_pb2.CreateConversationRequest(
            conversation=Conversation(
                title="greetings",
                model="tiny-llama",
                metadata={"surface": "test"},
                messages=[
                    Message(role="user", content="hi"),
                    Message(role="assistant", content="yo", metadata={"kind": "chat"}),
                ],
            )
        )
    )
    assert created.id.startswith("conv-") and created.organization == "default"
    assert [(m.sequence, m.role, m.content) for m in created.messages] == [
        (1, "user", "hi"),
        (2, "assistant", "yo"),
    ]
    assert all(m.id.startswith("cmsg-") for m in created.messages)
    assert (created.message_count, created.last_message_id) == (2, created.messages[1].id)
    ask = conversations_pb2.GetConversationRequest(conversation_id=created.id)
    got = mine.GetConversation(ask)
    stored = Conversation()
    stored.CopyFrom(created)
    del stored.messages[:]
    assert got == stored

    more = mine.AppendConversationMessages(
        conversations_pb2.AppendConversationMessagesRequest(
            conversation_id=created.id,
            messages=[Message(role="user", content=f"more {i}") for i in range(3)],
        )
    )
    assert [m.sequence for m in more.messages] == [3, 4, 5]
    got = mine.GetConversation(ask)
    assert (got.message_count, got.last_message_id) == (5, more.messages[-1].id)
    assert got.update_time.ToNanoseconds() >= got.create_time.ToNanoseconds()

    def page(token: str) -> conversations_pb2.ListConversationMessagesResponse:
        return mine.ListConversationMessages(
            conversations_pb2.ListConversationMessagesRequest(
                conversation_id=created.id, page_size=2, page_token=token
            )
        )

    pages = list(every_page(page))
    assert [len(p.messages) for p in pages] == [2, 2, 1]
    contents = [m.content for p in pages for m in p.messages]
    assert contents == ["hi", "yo", "more 0", "more 1", "more 2"]

    # Another org's conversation is missing, like one that never was.
    fails(Code.NOT_FOUND, theirs.GetConversation, ask)
    fails(
        Code.NOT_FOUND,
        theirs.AppendConversationMessages,
        conversations_pb2.AppendConversationMessagesRequest(
            conversation_id=created.id, messages=[Message(role="user", content="x")]
        ),
    )
    deleting = conversations_pb2.DeleteConversationRequest(conversation_id=created.id)
    fails(Code.NOT_FOUND, theirs.DeleteConversation, deleting)

    mine.DeleteConversation(deleting)
    fails(Code.NOT_FOUND, mine.GetConversation, ask)
    fails(Code.NOT_FOUND, mine.DeleteConversation, deleting)
    with sqlite3.connect(f"file:{server.home / 'tunewire.db'}?mode=ro", uri=True) as db:
        (left,) = db.execute(
            "SELECT COUNT(*) FROM conversation_messages WHERE conversation_id = ?", [created.id]
        ).fetchone()
    assert left == 0


def test_lists_are_newest_first_counted_and_skip(server: Server) -> None:
    org = server.new_org("talkers")
    calls = stub(org)
    made = [
        calls.CreateConversation(
            conversations_pb2.CreateConversationRequest(conversation=Conversation(title=f"c{i}"))
        ).id
        for i in range(5)
    ]

    def page(token: str, skip: int = 0) -> conversations_pb2.ListConversationsResponse:
        return calls.ListConversations(
            conversations_pb2.ListConversationsRequest(page_size=2, page_token=token, skip=skip)
        )

    pages = list(every_page(page))
    assert [c.id for p in pages for c in p.conversations] == made[::-1]
    assert {p.total_size for p in pages} == {5}
    assert [c.id for c in page("", skip=1).conversations] == made[-2:-4:-1]
    calls.DeleteConversation(conversations_pb2.DeleteConversationRequest(conversation_id=made[0]))
    assert page("").total_size == 4
    assert invalid(page, "", skip=-1) == {"skip": "must not be negative"}
    assert "page_token" in invalid(page, "not-a-token")


def test_bad_requests_name_every_field(server: Server) -> None:
    calls = stub(server.default)
    theirs = server.other.create_job(server.other.upload_sample().id)
    violations = invalid(
        calls.CreateConversation,
        conversations_pb2.CreateConversationRequest(
            conversation=Conversation(
                title="t" * 257,
                job_id=theirs.id,
                metadata={f"k{i}": "v" for i in range(17)},
                messages=[
                    Message(role="robot", content="hi"),
                    Message(role="user", content="x" * 65_537, metadata={"": "v"}),
                ],
            )
        ),
    )
    assert set(violations) == {
        "conversation.title",
        "conversation.job_id",
        "conversation.metadata",
        "conversation.messages[0].role",
        "conversation.messages[1].content",
        "conversation.messages[1].metadata['']",
    }
    created = calls.CreateConversation(
        conversations_pb2.CreateConversationRequest(conversation=Conversation())
    )
    appending = conversations_pb2.AppendConversationMessagesRequest(conversation_id=created.id)
    assert "messages" in invalid(calls.AppendConversationMessages, appending)
    appending.messages.add(role="user", content="ok", metadata={"k": "v" * 4097})
    assert set(invalid(calls.AppendConversationMessages, appending)) == {
        "messages[0].metadata['k']"
    }
    calls.DeleteConversation(
        conversations_pb2.DeleteConversationRequest(conversation_id=created.id)
    )


def test_native_rest_speaks_the_same_contract(rest: Stack) -> None:
    with rest.http() as http:
        created = http.post(
            "/tunewire/v1/conversations",
            json={"title": "rest", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert created.status_code == 200, created.text
        ident = created.json()["id"]
        appended = http.post(
            f"/tunewire/v1/conversations/{ident}:append",
            json={"messages": [{"role": "assistant", "content": "yo"}]},
        )
        assert [m["sequence"] for m in appended.json()["messages"]] == [2]
        listed = http.get(f"/tunewire/v1/conversations/{ident}/messages").json()
        assert [m["content"] for m in listed["messages"]] == ["hi", "yo"]
        assert http.get(f"/tunewire/v1/conversations/{ident}").json()["message_count"] == 2
        assert http.delete(f"/tunewire/v1/conversations/{ident}").status_code == 200
        assert http.get(f"/tunewire/v1/conversations/{ident}").status_code == 404
