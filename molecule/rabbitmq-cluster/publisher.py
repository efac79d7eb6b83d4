"""Publish numbered persistent messages to a quorum queue through any broker of the cluster,
with publisher confirms and `mandatory`, until SIGTERM; then write which numbers the cluster
confirmed. A connection that fails moves on to the next broker and the unconfirmed number is
sent again, so a message may arrive twice but a confirmed one must never be lost.

Usage: publisher.py SUMMARY QUEUE VHOST USER BROKER... (password in AMQP_PASSWORD)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pika

summary_path, queue, vhost, user, *brokers = sys.argv[1:]
credentials = pika.PlainCredentials(user, os.environ["AMQP_PASSWORD"])
# Wall-clock timestamps, not a duration: the check reads the journal between them (--since).
state = {"started": time.time(), "confirmed": [], "reconnects": 0, "running": True}


def stop(*_) -> None:
    state["running"] = False


signal.signal(signal.SIGTERM, stop)
number, turn = 0, 0
while state["running"]:
    broker = brokers[turn % len(brokers)]
    turn += 1
    try:
        parameters = pika.ConnectionParameters(
            host=broker, virtual_host=vhost, credentials=credentials, socket_timeout=5
        )
        connection = pika.BlockingConnection(parameters)
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(queue=queue, durable=True)
        while state["running"]:
            properties = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
            channel.basic_publish("", queue, str(number).encode(), properties, mandatory=True)
            state["confirmed"].append(number)
            number += 1
            time.sleep(0.05)
        connection.close()
    except Exception:  # a broker going away: the next one takes over
        state["reconnects"] += 1
        time.sleep(0.5)
state["stopped"] = time.time()
with open(summary_path + ".tmp", "w") as summary:
    json.dump(state, summary)
os.replace(summary_path + ".tmp", summary_path)
