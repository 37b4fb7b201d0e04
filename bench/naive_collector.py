"""The collector a newcomer writes: paho auto-ack, one INSERT + commit per message.

Used by bench/ingest.py as the baseline. Loses messages on a crash (acks before storing) and
is slow (one transaction per message); that is the point of comparing against it.

    python bench/naive_collector.py --host H --port P --client-id ID --database-url URL --count N
"""

from __future__ import annotations

import argparse
import json

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--topic", default="hearth/v1/+/+")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--count", type=int, default=0, help="exit after N messages (0 = never)")
    parser.add_argument("--subscribe-only", action="store_true", help="create the session, exit")
    args = parser.parse_args()

    conn = psycopg.connect(args.database_url)
    devices = dict(conn.execute("SELECT device_id, user_id FROM devices").fetchall())
    seen = 0
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        clean_session=False,
    )

    def on_connect(c: mqtt.Client, _u: object, _f: object, _rc: object, _p: object) -> None:
        c.subscribe(args.topic, qos=1)

    def on_subscribe(c: mqtt.Client, *_: object) -> None:
        if args.subscribe_only:
            c.disconnect()

    def on_message(c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        nonlocal seen
        device = msg.topic.split("/")[2]
        body = json.loads(msg.payload)
        for signal, value in body["readings"].items():
            conn.execute(
                "INSERT INTO numeric_readings (time, device_id, user_id, signal, value) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (body["ts"], device, devices[device], signal, value),
            )
        conn.commit()
        seen += 1
        if args.count and seen >= args.count:
            c.disconnect()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(args.host, args.port)
    client.loop_forever()
    print(json.dumps({"messages": seen}))


if __name__ == "__main__":
    main()
