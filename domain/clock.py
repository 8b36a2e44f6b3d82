from datetime import datetime

from domain.models import utcnow


class SystemClock:
    def now(self) -> datetime:
        return utcnow()
