import pytest

from threadline.actors.memory_journal import MemoryJournal
from tests.journal_contract import AttachmentContract, JournalContract


class TestMemoryJournal(JournalContract, AttachmentContract):
    @pytest.fixture
    def journal(self):
        return MemoryJournal()
