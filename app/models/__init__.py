"""SQLAlchemy tables. Only ORM classes live here; wire schemas live next to their routers."""

from app.models.action import Action
from app.models.action_attempt import ActionAttempt
from app.models.api_key import ApiKey, IdempotentRequest
from app.models.base import Base
from app.models.broadcast import Broadcast, BroadcastRecipient, BroadcastTask
from app.models.channel import Channel
from app.models.customer import ExternalContact, Follow
from app.models.event import Event
from app.models.group_chat import CustomerGroup, GroupMember
from app.models.kf import KfCursor, KfWindow
from app.models.media import MediaFile, MediaUpload
from app.models.member import Department, Member
from app.models.message import Message
from app.models.rule import Rule
from app.models.stats import CustomerStat, GroupStat
from app.models.sync_run import SyncRun
from app.models.tag import Tag, TagGroup
from app.models.webhook import WebhookEndpoint
from app.models.wecom_api import AccessToken, ApiCall
from app.models.wecom_app import WecomApp

__all__ = [
    "AccessToken",
    "Action",
    "ActionAttempt",
    "ApiCall",
    "ApiKey",
    "Base",
    "Broadcast",
    "BroadcastRecipient",
    "BroadcastTask",
    "Channel",
    "CustomerGroup",
    "CustomerStat",
    "Department",
    "Event",
    "ExternalContact",
    "Follow",
    "GroupMember",
    "GroupStat",
    "IdempotentRequest",
    "KfCursor",
    "KfWindow",
    "MediaFile",
    "MediaUpload",
    "Member",
    "Message",
    "Rule",
    "SyncRun",
    "Tag",
    "TagGroup",
    "WebhookEndpoint",
    "WecomApp",
]
