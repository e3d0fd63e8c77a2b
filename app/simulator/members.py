"""The member (通讯录) API `wecom-hub sync` reads names with: user/get (读取成员), as a
self-built app created after 2022-06-20 sees it. Such an app gets a member's userid, name,
departments and position, but no longer avatar, gender, mobile, email, biz_mail, qr_code or
address (those need the member's own OAuth consent), so the simulator leaves them out too.

A member outside the app's visible range answers 60011 in WeCom; the simulator's members are
all visible, and a test that wants 60011 (or an app refused the API, 48002) injects it as a
fault. ADR 0012 says why user/get and not user/list_id or user/simplelist.
"""

from typing import Any

from app.simulator.state import ApiError, Corp


async def user_get(corp: Corp, body: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
    userid = query.get("userid", "")
    if userid not in corp.members:
        raise ApiError(60111, "userid not found")
    return {
        "userid": userid,
        "name": corp.member_names.get(userid, userid),
        "department": [1],
        "order": [0],
        "position": "",
        "is_leader_in_dept": [0],
        "direct_leader": [],
        "alias": "",
        "status": 1,  # 1 active, 2 disabled, 4 not yet joined, 5 left
        "main_department": 1,
        "extattr": {"attrs": []},
    }
