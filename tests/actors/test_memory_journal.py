import pytest

from threadline.actors.memory_journal import MemoryJournal
from tests.journal_contract import JournalContract


class TestMemoryJournal(JournalContract):
    @pytest.fixture
    def journal(self):
        return MemoryJournal()
