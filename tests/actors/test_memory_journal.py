import pytest

from threadline.actors.memory_journal import MemoryJournal
from tests.journal_contract import AttachmentContract, JournalContract, UsageContract


class TestMemoryJournal(JournalContract, AttachmentContract, UsageContract):
    @pytest.fixture
    def journal(self):
        return MemoryJournal()
