import pytest

from threadline.stores import open_journal
from tests.journal_contract import AttachmentContract, JournalContract, UsageContract


class TestSQLiteJournal(JournalContract, AttachmentContract, UsageContract):
    @pytest.fixture
    async def journal(self, tmp_path):
        async with open_journal(f"sqlite:///{tmp_path}/journal.db") as journal:
            yield journal
