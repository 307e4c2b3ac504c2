"""ConversationService: an organization's stored conversations and their messages."""

from __future__ import annotations

from google.protobuf import empty_pb2

from server import conversations
from server.control_plane import ControlPlane, authenticated, caller_org
from server.errors import InvalidArgument
from server.store import pages
from server.store.db import write
from tunewire.v1 import conversations_pb2, conversations_pb2_grpc

Conversation = conversations_pb2.Conversation


class ConversationServicer(conversations_pb2_grpc.ConversationServiceServicer):
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    @authenticated
    async def CreateConversation(
        self, request: conversations_pb2.CreateConversationRequest, context
    ) -> Conversation:
        db, org = self.plane.db, caller_org()
        conversations.check_create(db, org, request.conversation)
        with write(db):
            return conversations.create(db, org, request.conversation)

    @authenticated
    async def GetConversation(
        self, request: conversations_pb2.GetConversationRequest, context
    ) -> Conversation:
        return conversations.get(self.plane.db, caller_org(), request.conversation_id)

    @authenticated
    async def ListConversations(
        self, request: conversations_pb2.ListConversationsRequest, context
    ) -> conversations_pb2.ListConversationsResponse:
        db, org = self.plane.db, caller_org()
        if request.skip < 0:
            raise InvalidArgument.field("skip", "must not be negative")
        rows, token = pages.keyset(
            db,
            conversations.TABLE,
            "org = ?",
            [org],
            pages.page_size(request.page_size),
            request.page_token,
            skip=request.skip,
        )
        counted = db.execute("SELECT n FROM conversation_counts WHERE org = ?", [org]).fetchone()
        return conversations_pb2.ListConversationsResponse(
            conversations=[Conversation.FromString(r["proto"]) for r in rows],
            next_page_token=token,
            total_size=counted[0] if counted else 0,
        )

    @authenticated
    async def DeleteConversation(
        self, request: conversations_pb2.DeleteConversationRequest, context
    ) -> empty_pb2.Empty:
        db = self.plane.db
        with write(db):
            conversation = conversations.get(db, caller_org(), request.conversation_id)
            conversations.delete(db, conversation.id)
        return empty_pb2.Empty()

    @authenticated
    async def AppendConversationMessages(
        self, request: conversations_pb2.AppendConversationMessagesRequest, context
    ) -> conversations_pb2.AppendConversationMessagesResponse:
        count = len(request.messages)
        if not 1 <= count <= conversations.MAX_MESSAGES_PER_CALL:
            raise InvalidArgument.field(
                "messages", f"1 to {conversations.MAX_MESSAGES_PER_CALL} messages, not {count}"
            )
        if problems := conversations.check_messages("messages", request.messages):
            raise InvalidArgument(problems)
        db = self.plane.db
        with write(db):
            conversation = conversations.get(db, caller_org(), request.conversation_id)
            stored = conversations.append(db, conversation, request.messages)
        return conversations_pb2.AppendConversationMessagesResponse(messages=stored)

    @authenticated
    async def ListConversationMessages(
        self, request: conversations_pb2.ListConversationMessagesRequest, context
    ) -> conversations_pb2.ListConversationMessagesResponse:
        db = self.plane.db
        conversation = conversations.get(db, caller_org(), request.conversation_id)
        found, token = conversations.messages_page(
            db, conversation.id, request.page_size, request.page_token
        )
        return conversations_pb2.ListConversationMessagesResponse(
            messages=found, next_page_token=token
        )
