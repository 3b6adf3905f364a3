import pytest

from threadline.stores import open_journal
from tests.journal_contract import AttachmentContract, JournalContract


class TestPostgresJournal(JournalContract, AttachmentContract):
    @pytest.fixture
    async def journal(self, pg_dsn):
        async with open_journal(pg_dsn) as journal:
            yield journal
