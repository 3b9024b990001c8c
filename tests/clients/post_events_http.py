"""Posts plain CloudEvents to ferry's api (`POST /events`), as any system that is not ferry
would: the CloudEvents HTTP binding in binary mode (`ce-` headers), with Python's standard
library only, each event COPIES times with the same id (a client that retried).

usage: post_events_http.py API_URL TOKEN TYPE SOURCE SUBJECT DATA_JSON ID_PREFIX COUNT COPIES

Event i (from 0) has the id ID_PREFIX-i; `{i}` in DATA_JSON becomes i. Prints the ids.
"""
import datetime
import sys
import urllib.request

api, token, ty, source, subject, data, prefix, count, copies = sys.argv[1:10]
for copy in range(int(copies)):
    for i in range(int(count)):
        event_id = f"{prefix}-{i}"
        now = datetime.datetime.now(datetime.timezone.utc)
        request = urllib.request.Request(
            f"{api}/events",
            data=data.replace("{i}", str(i)).encode(),
            method="POST",
            headers={
                "authorization": f"Bearer {token}",
                "content-type": "application/json",
                "ce-specversion": "1.0",
                "ce-id": event_id,
                "ce-source": source,
                "ce-type": ty,
                "ce-subject": subject,
                "ce-time": now.isoformat().replace("+00:00", "Z"),
            },
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            if answer.status != 202:
                sys.exit(f"POST /events answered {answer.status}: {answer.read().decode()}")
        if copy == 0:
            print(event_id)
