"""`wecom-hub serve` as a user runs it: embedded Postgres, real HTTP, a clean stop."""

import os
import signal
import subprocess
from pathlib import Path

import httpx

from app.simulator.callbacks import build_callback, build_url_verification, text_message
from tests.conftest import random_app
from tests.process_helpers import WECOM_HUB, answers_ok, free_port, wait_until


def test_serve_embedded_end_to_end_and_stop_on_sigterm(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WECOM_HUB_")}
    env["WECOM_HUB_DATA_DIR"] = str(tmp_path / "data")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = subprocess.Popen(
        [WECOM_HUB, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert wait_until(lambda: answers_ok(f"{base}/readyz"), 60), "serve did not become ready"
        app = random_app("shop")
        subprocess.run(
            [
                WECOM_HUB,
                "apps",
                "add",
                "--slug",
                "shop",
                "--corp-id",
                app.corp_id,
                "--token",
                app.token,
                "--aes-key",
                app.aes_key,
                "--secret",
                app.secret,
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        verified = httpx.get(
            f"{base}/callback/shop", params=build_url_verification(app.crypt, "42")
        )
        assert verified.text == "42"
        callback = build_callback(
            app.crypt, text_message(corp_id=app.corp_id, from_user="u", content="hi", msg_id="1")
        )
        stored = httpx.post(f"{base}/callback/shop", params=callback.params, content=callback.body)
        assert stored.text == "success"
    finally:
        serve.send_signal(signal.SIGTERM)
        output, _ = serve.communicate(timeout=30)

    assert serve.returncode == 0, output.decode()
    assert b"/callback/<slug>" in output
    # The embedded Postgres was stopped, not left behind.
    assert not (tmp_path / "data" / "postgres" / "postmaster.pid").exists()
