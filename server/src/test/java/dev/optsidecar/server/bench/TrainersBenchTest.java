package dev.optsidecar.server.bench;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The several-trainers table, run with a tiny model, two trainers and short windows. */
class TrainersBenchTest {
    @Test
    @Timeout(60)
    void rowsHavePositiveRatesAndCountsThatAgree() throws Exception {
        ByteArrayOutputStream printed = new ByteArrayOutputStream();
        List<TrainersBench.Row> rows;
        try (PrintStream out = new PrintStream(printed, true, StandardCharsets.UTF_8)) {
            rows = new TrainersBench(1, 0.1, 0.25, out).run(List.of(20_000L),
                    List.of(TrainersBench.Mode.ASYNC, TrainersBench.Mode.SYNC), List.of(1, 2));
        }
        String table = printed.toString(StandardCharsets.UTF_8);

        assertEquals(4, rows.size(), table);
        int i = 0;
        for (TrainersBench.Mode mode : TrainersBench.Mode.values()) {
            for (int clients : new int[] {1, 2}) {
                TrainersBench.Row row = rows.get(i++);
                assertEquals(mode, row.mode(), table);
                assertEquals(clients, row.clients(), table);
                assertTrue(row.versionsPerSecond() > 0, table);
                assertTrue(row.gradientsPerSecond() > 0, table);
                assertEquals(row.gradientsPerSecond() * 20_000 * 4 / 1e6, row.megabytesPerSecond(), 1e-9, table);
                assertTrue(row.medianStepMs() > 0, table);
                // Every trainer stays attached through the window: async applies each gradient as
                // a version of its own, sync one version per gradient of every trainer.
                assertEquals(row.versions() * (mode == TrainersBench.Mode.SYNC ? clients : 1), row.contributions(),
                        table);
                assertEquals(0, row.late(), table);
                assertNull(row.countMismatch(), table);
                if (mode == TrainersBench.Mode.ASYNC && clients == 2) {
                    assertTrue(row.meanStaleness() > 0, table); // the other trainer's steps land in between
                }
            }
        }
        assertTrue(table.contains("versions/s"), table);
        assertTrue(table.contains("1-trainer grads/s"), table);
        assertEquals(4, table.lines().filter(l -> l.matches("\\s+0\\.0800\\s+(async|sync)\\s+[12]\\s.*")).count(), table);
    }
}
