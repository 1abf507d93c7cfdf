#!/usr/bin/env python3
"""Pre-auth starvation probe: N attacking connections each declare a 3 MB body and trickle one
byte at a time, reconnecting when cut off, while one client sends signed deliveries in a row.
Prints the deliveries' status counts and latency percentiles, and how many attackers got 408.

    bench/trickle.py URL SECRET [attackers=200] [deliveries=300]
"""
import asyncio
import hashlib
import hmac
import json
import sys
import time
import uuid


async def attacker(host, port, stop, cut):
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"X-Hub-Signature-256: sha256=00\r\nContent-Length: 3145728\r\n\r\n{"
            )
            await writer.drain()
            while not stop.is_set():
                try:
                    line = await asyncio.wait_for(reader.readline(), 0.5)
                except asyncio.TimeoutError:
                    writer.write(b" ")
                    await writer.drain()
                    continue
                if line.startswith(b"HTTP/1.1 408"):
                    cut[0] += 1
                break
            writer.close()
        except (ConnectionError, OSError):
            await asyncio.sleep(0.05)


def delivery():
    wamid = "wamid.T" + uuid.uuid4().hex
    wa = str(491500000000 + uuid.uuid4().int % 10**8)
    body = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "1555", "phone_number_id": "PN"},
        "contacts": [{"profile": {"name": "T"}, "wa_id": wa, "user_id": "US." + uuid.uuid4().hex}],
        "messages": [{"from": wa, "id": wamid, "timestamp": "1763798400", "type": "text", "text": {"body": "hi"},
                      "referral": {"source_id": "AD1", "source_type": "ad", "ctwa_clid": uuid.uuid4().hex}}]}}]}]}
    return json.dumps(body).encode()


async def deliver(host, port, secret, n):
    statuses, latencies = {}, []
    for _ in range(n):
        body = delivery()
        sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            f"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
            f"X-Hub-Signature-256: {sig}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        )
        await writer.drain()
        status = (await reader.readline()).split(b" ")[1].decode()
        await reader.read()
        writer.close()
        latencies.append(time.perf_counter() - started)
        statuses[status] = statuses.get(status, 0) + 1
    return statuses, sorted(latencies)


async def main():
    url, secret = sys.argv[1], sys.argv[2]
    attackers = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 300
    host, port = url.split("//")[1].split(":")
    port = int(port.rstrip("/"))
    stop, cut = asyncio.Event(), [0]
    tasks = [asyncio.create_task(attacker(host, port, stop, cut)) for _ in range(attackers)]
    await asyncio.sleep(1.5)
    statuses, lat = await deliver(host, port, secret, n)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    pct = lambda p: lat[min(len(lat) - 1, int(len(lat) * p))] * 1000
    print(f"attackers {attackers}: signed deliveries {statuses}, p50 {pct(0.5):.1f} ms, "
          f"p99 {pct(0.99):.1f} ms, max {lat[-1] * 1000:.1f} ms; attackers cut off with 408: {cut[0]}")


asyncio.run(main())
