package dev.optsidecar.server;

import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.server.durability.Persistence;
import dev.optsidecar.server.durability.StepJournal;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.List;
import java.util.Set;
import java.util.stream.Collectors;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** A closed server leaves no thread of its own behind, however often servers start and stop in one process. */
class SidecarServerTest {
    @Test
    void noThreadOutlivesAClosedServer(@TempDir Path dir) throws Exception {
        Set<Thread> before = serverThreads();
        for (int round = 0; round < 3; round++) {
            // A snapshot after every step: the background snapshot thread runs too.
            Persistence.Options durable = new Persistence.Options(dir.resolve("run-" + round), 1,
                    StepJournal.Sync.WRITE, 1, null, true);
            try (SidecarFixture f = SidecarFixture.inProcess(durable, List.of()).start()) {
                useEveryThread(f);
                f.server().persistence().awaitBackgroundSnapshots();
            }
            try (SidecarFixture f = SidecarFixture.onSocket().start()) {
                useEveryThread(f);
            }
        }
        Set<Thread> left = serverThreads();
        left.removeAll(before);
        for (Thread t : left) {
            t.join(1_000); // a thread whose executor has just terminated may still be returning
        }
        assertEquals(Set.of(), left.stream().filter(Thread::isAlive).map(Thread::getName).collect(Collectors.toSet()));
    }

    /**
     * A sync step that waits for a second trainer until its straggler timeout (the timer thread), is
     * completed away from the model's lock and its trainer detached (the completion threads), on a
     * model large enough for the engine to share the work out (the engine's pool).
     */
    private static void useEveryThread(SidecarFixture f) {
        int n = 1 << 18;
        f.client().register(TestData.spec("threads", "SGD", TestData.hp("lr", 0.1), n)
                .setCoordination(TestData.sync(2, 20, 1)).build(), TestData.data(TestData.random(n, 1)));
        try (Trainer t = f.client().trainer("threads", "alone")) {
            StepResult r = t.step(new float[][] {TestData.random(n, 2)}, new float[][] {new float[n]});
            assertEquals(1, r.getVersion());
        }
        SidecarFixture.awaitTrue("the trainer to detach",
                () -> f.client().describe("threads").getCoordination().getTrainersCount() == 0);
        assertTrue(f.client().list().contains("threads"));
    }

    private static Set<Thread> serverThreads() {
        return Thread.getAllStackTraces().keySet().stream()
                .filter(t -> t.getName().startsWith("optsidecar-"))
                .collect(Collectors.toSet());
    }
}
