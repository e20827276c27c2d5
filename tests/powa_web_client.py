#!/usr/bin/python3
"""Talk to a collector the way powa-web does.

LISTEN on a random channel, NOTIFY powa_collector with
"COMMAND CHANNEL ARGS" (with the trailing space powa-web leaves when there
are no arguments), wait up to 3 seconds, and keep the first answer whose
first word is the command. Prints the answer; exit code 3 when none came.

Usage: powa_web_client.py DSN COMMAND [ARG...]
"""
import random
import select
import sys
import time

import psycopg2


def main():
    dsn, command, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    channel = "r%d" % random.randint(1, 99999)
    cur.execute('LISTEN "%s"' % channel)
    payload = "%s %s %s" % (command, channel, " ".join(args))
    cur.execute("NOTIFY powa_collector, %s", (payload,))
    deadline = time.time() + 3
    while True:
        # The answer may already have been read with the NOTIFY's own
        # result: look at what psycopg2 holds before waiting on the socket.
        conn.poll()
        while conn.notifies:
            notify = conn.notifies.pop(0)
            if notify.channel == channel and notify.payload.split(" ")[0] == command:
                print(notify.payload)
                return 0
        left = deadline - time.time()
        if left <= 0 or select.select([conn], [], [], left) == ([], [], []):
            return 3


if __name__ == "__main__":
    sys.exit(main())
