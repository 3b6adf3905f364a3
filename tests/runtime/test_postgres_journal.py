import pytest

from threadline.stores import open_journal
from tests.journal_contract import AttachmentContract, JournalContract, UsageContract


class TestPostgresJournal(JournalContract, AttachmentContract, UsageContract):
    @pytest.fixture
    async def journal(self, pg_dsn):
        async with open_journal(pg_dsn) as journal:
            yield journal
