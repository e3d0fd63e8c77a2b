"""What the /sim control routers (contact ways, mass messages) share: they answer as a test
harness does, an HTTP 404 for what does not exist, not with WeCom's errcodes."""

from fastapi import HTTPException

from app.simulator.state import Corp, SimState


def known_corp(sim: SimState, corp_id: str) -> Corp:
    corp = sim.corps.get(corp_id)
    if corp is None:
        raise HTTPException(404, f"no corp {corp_id!r}")
    return corp
