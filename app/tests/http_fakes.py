"""A fake HTTP session for ElasticsearchClient: every request gets the same reply (or raises it,
when the reply is an exception) and is remembered."""

import json


class Reply:
    def __init__(self, status, body):
        self.status_code = status
        self.content = json.dumps(body).encode()
        self.text = self.content.decode()
        self._body = body

    def json(self):
        return self._body


class Session:
    def __init__(self, reply):
        self.reply = reply
        self.sent = []

    def request(self, method, url, **kwargs):
        self.sent.append((method, url, kwargs))
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply
