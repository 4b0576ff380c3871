package dev.optsidecar.server.model;

import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

class CoverageTest {
    @Test
    void inOrderChunksComplete() {
        Coverage c = new Coverage(10);
        c.add(0, 4);
        c.add(4, 10);
        assertTrue(c.isComplete());
        assertEquals(0, c.missing());
    }

    @Test
    void outOfOrderChunksMergeAndReportTheGap() {
        Coverage c = new Coverage(10);
        c.add(6, 10);
        c.add(0, 3);
        assertFalse(c.isComplete());
        assertEquals(3, c.missing());
        assertEquals(3, c.firstMissing());
        c.add(3, 6);
        assertTrue(c.isComplete());
    }

    @Test
    void overlapsAreDetectedOnBothSides() {
        Coverage c = new Coverage(100);
        c.add(10, 20);
        assertTrue(c.overlaps(19, 25));
        assertTrue(c.overlaps(5, 11));
        assertTrue(c.overlaps(12, 13));
        assertTrue(c.overlaps(0, 100));
        assertFalse(c.overlaps(20, 30));
        assertFalse(c.overlaps(0, 10));
    }
}
