"""A FastAPI application served for real by tests/test_fastapi.py (uvicorn's
command line and gunicorn with uvicorn workers) and benches/fastapi/run.py.

    python -m uvicorn --app-dir tests/apps fastapi_app:app --loop ferroloop:new_event_loop

Every endpoint reports what it needs to prove that it ran on the loop under
test: ``/loop`` the running loop's class and the worker's pid, the websocket
and the background task the loop class too.
"""

import asyncio
import contextlib
import json
import os
from typing import Annotated

from fastapi import BackgroundTasks, Depends, FastAPI, Header, HTTPException, WebSocket
from fastapi.responses import StreamingResponse
from fastapi.websockets import WebSocketDisconnect
from pydantic import BaseModel, Field

STATE_DIR_ENV = "FASTAPI_APP_STATE_DIR"


@contextlib.asynccontextmanager
async def lifespan(app):
    """With $FASTAPI_APP_STATE_DIR set, each server process (one per
    gunicorn worker) writes ``<pid>.json`` there once it serves: its pid and
    loop class, so a test knows every worker without relying on which one
    the kernel hands connections to."""
    state_dir = os.environ.get(STATE_DIR_ENV)
    if state_dir:
        write_state(state_dir, {"pid": os.getpid(), "loop": loop_class()})
    yield


def write_state(state_dir, state):
    path = os.path.join(state_dir, f"{state['pid']}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(path + ".tmp", path)  # readers never see a partial file


app = FastAPI(lifespan=lifespan)

TOKEN = "s3cret"  # what the X-Token dependency accepts

# Effects of the background tasks, by key (per worker process).
TASKS_DONE = {}
# /stream/{sid} holds after its first chunk until /stream/{sid}/release.
RELEASES = {}


def loop_class():
    cls = type(asyncio.get_running_loop())
    return f"{cls.__module__}.{cls.__qualname__}"


class Item(BaseModel):
    name: str = Field(min_length=1)
    price: float = Field(ge=0)
    quantity: int = 1
    tags: list[str] = []


async def verify_token(x_token: Annotated[str, Header()] = ""):
    """A dependency: the caller's token, or 401."""
    if x_token != TOKEN:
        raise HTTPException(status_code=401, detail="bad token")
    return {"user": "tester", "loop": loop_class()}


@app.get("/loop")
async def get_loop():
    return {"loop": loop_class(), "pid": os.getpid()}


@app.get("/json")
async def get_json():
    """The benchmark's endpoint: a small fixed JSON document."""
    return {"message": "Hello, World!"}


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None, limit: int = 10):
    return {"item_id": item_id, "q": q, "limit": limit}


@app.post("/items")
async def create_item(item: Item, auth: Annotated[dict, Depends(verify_token)]):
    return {
        "item": item.model_dump(),
        "total": round(item.price * item.quantity, 2),
        "user": auth["user"],
        "dependency_loop": auth["loop"],
    }


async def record_task(key: str, value: str):
    # A coroutine background task: it runs on the server's loop after the
    # response went out.
    await asyncio.sleep(0.01)
    TASKS_DONE[key] = {"value": value.upper(), "loop": loop_class(), "pid": os.getpid()}


@app.post("/tasks/{key}", status_code=202)
async def start_task(key: str, value: str, background_tasks: BackgroundTasks):
    background_tasks.add_task(record_task, key, value)
    return {"scheduled": key}


@app.get("/tasks/{key}")
async def task_result(key: str):
    if key not in TASKS_DONE:
        raise HTTPException(status_code=404, detail="not done")
    return TASKS_DONE[key]


@app.get("/stream/{sid}")
async def stream(sid: str, n: int = 5):
    """``n`` lines; after the first one the generator waits until
    /stream/{sid}/release is called, so a client that read the first line
    before releasing proves that the response really streams."""
    release = RELEASES.setdefault(sid, asyncio.Event())

    async def lines():
        for i in range(n):
            yield f"{sid} chunk {i} of {n}\n"
            if i == 0:
                await asyncio.wait_for(release.wait(), 30)
            else:
                await asyncio.sleep(0)
        RELEASES.pop(sid, None)

    return StreamingResponse(lines(), media_type="text/plain")


@app.post("/stream/{sid}/release")
async def release_stream(sid: str):
    RELEASES.setdefault(sid, asyncio.Event()).set()
    return {"released": sid}


@app.websocket("/ws")
async def ws_echo(websocket: WebSocket):
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                text = message["text"]
                if text == "close":
                    await websocket.close(code=1000)
                    return
                await websocket.send_text(f"echo: {text} on {loop_class()}")
            elif message.get("bytes") is not None:
                await websocket.send_bytes(message["bytes"][::-1])
    except WebSocketDisconnect:
        pass
