package dev.optsidecar.server.durability;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.proto.v1.RestoreRequest;
import dev.optsidecar.proto.v1.SnapshotInfo;
import dev.optsidecar.server.SocketServer;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.function.Consumer;
import java.util.logging.Handler;
import java.util.logging.Level;
import java.util.logging.LogRecord;
import java.util.logging.Logger;
import java.util.zip.CRC32C;

import static dev.optsidecar.server.durability.DurableRun.spec;
import static dev.optsidecar.server.durability.DurableRun.start;
import static dev.optsidecar.server.durability.DurableRun.steps;
import static dev.optsidecar.server.durability.SnapshotResumeTest.data;
import static dev.optsidecar.server.durability.SnapshotResumeTest.initial;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Snapshots whose checksums are valid but whose manifest cannot be loaded (a spec or counters the
 * server refuses, a spec that does not parse): a restore falls back to the snapshot before, a
 * startup restore of every model leaves out the one it cannot load and serves the others, and
 * the Restore RPC answers DATA_LOSS naming the file.
 */
public class UnloadableSnapshotTest {
    private static final ObjectMapper JSON = new ObjectMapper();

    @TempDir
    Path tmp;

    /** Edits a snapshot's manifest and writes its checksum anew, so that it passes verification. */
    static void rewriteManifest(Path snapshotDir, Consumer<ObjectNode> modelMeta) throws IOException {
        Path manifest = snapshotDir.resolve("manifest.json");
        ObjectNode root = (ObjectNode) JSON.readTree(manifest.toFile());
        modelMeta.accept((ObjectNode) root.get("model_meta"));
        byte[] bytes = JSON.writerWithDefaultPrettyPrinter().writeValueAsBytes(root);
        Files.write(manifest, bytes);
        CRC32C crc = new CRC32C();
        crc.update(bytes);
        Files.writeString(snapshotDir.resolve("manifest.crc32c"), String.format("%08x%n", crc.getValue()));
    }

    /** Each way a checksum-valid manifest can be unloadable; the fragment its error names. */
    public static void damage(Path snapshotDir, String how) throws IOException {
        rewriteManifest(snapshotDir, meta -> {
            ObjectNode spec = (ObjectNode) meta.get("spec");
            ObjectNode state = (ObjectNode) meta.get("state");
            switch (how) {
                case "unknown-algorithm" -> ((ObjectNode) spec.get("optimizer")).put("algorithm", "NoSuchAlgorithm");
                case "undeclared-counter" -> {
                    ObjectNode group = (ObjectNode) state.withArray("groups").get(0);
                    (group.has("scalars") ? (ObjectNode) group.get("scalars") : group.putObject("scalars")).put("foo", 1.0);
                }
                case "negative-lr" -> ((ObjectNode) spec.get("optimizer")).putObject("hyperparameters").put("lr", -1.0);
                case "spec-not-a-message" -> spec.put("optimizer", 42);
                case "state-not-a-message" -> meta.put("state", "x");
                default -> throw new IllegalArgumentException(how);
            }
        });
    }

    private static final class Warnings extends Handler implements AutoCloseable {
        final List<LogRecord> records = new CopyOnWriteArrayList<>();

        Warnings() {
            Logger.getLogger("dev.optsidecar.server").addHandler(this);
        }

        List<String> matching(String fragment) {
            return records.stream().filter(r -> r.getLevel() == Level.WARNING && r.getMessage() != null
                    && r.getMessage().contains(fragment)).map(LogRecord::getMessage).toList();
        }

        @Override
        public void publish(LogRecord r) {
            records.add(r);
        }

        @Override
        public void flush() {
        }

        @Override
        public void close() {
            Logger.getLogger("dev.optsidecar.server").removeHandler(this);
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"unknown-algorithm", "undeclared-counter", "negative-lr", "spec-not-a-message",
            "state-not-a-message"})
    void latestLeavesOutTheModelItCannotLoadAndServesTheOthers(String how) throws Exception {
        SnapshotResumeTest.State good;
        SnapshotInfo bad;
        try (SocketServer s = start(tmp, List.of());
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + s.port())) {
            client.register(spec("good"), data(initial()));
            steps(client, "good", 1, 3);
            good = SnapshotResumeTest.State.of(client, "good");
            client.register(spec("bad"), data(initial()));
            steps(client, "bad", 1, 2);
            bad = client.snapshot("bad");
        }
        // Older snapshots of 'bad' are damaged alike: nothing to fall back to.
        try (var dirs = Files.list(tmp.resolve("bad"))) {
            for (Path dir : dirs.filter(p -> Files.isRegularFile(p.resolve("manifest.json"))).toList()) {
                damage(dir, how);
            }
        }
        try (Warnings warnings = new Warnings();
             SocketServer s = start(tmp, List.of("latest"));
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + s.port())) {
            good.assertSame(SnapshotResumeTest.State.of(client, "good"), "the other model");
            assertFalse(client.list().contains("bad"));
            List<String> skipped = warnings.matching("not restored");
            assertEquals(1, skipped.size(), warnings.records.stream().map(LogRecord::getMessage).toList().toString());
            assertTrue(skipped.get(0).contains("'bad'") && skipped.get(0).contains(bad.getId())
                    && skipped.get(0).contains("manifest.json"), skipped.get(0));

            StatusRuntimeException e = assertThrows(StatusRuntimeException.class, () -> client.restore(
                    RestoreRequest.newBuilder().setModel("bad").setId(bad.getId()).build()));
            assertEquals(Status.Code.DATA_LOSS, e.getStatus().getCode(), e::toString);
            assertTrue(e.getStatus().getDescription().contains("manifest.json"), e::toString);
            StatusRuntimeException latest = assertThrows(StatusRuntimeException.class, () -> client.restore(
                    RestoreRequest.newBuilder().setModel("bad").build()));
            assertEquals(Status.Code.DATA_LOSS, latest.getStatus().getCode(), latest::toString);
            assertFalse(client.list().contains("bad"));
        }
        IOException named = assertThrows(IOException.class, () -> start(tmp, List.of("bad")).close());
        assertTrue(named.getMessage().startsWith("--restore bad: ") && named.getMessage().contains("manifest.json"),
                named.getMessage());
    }

    @Test
    void anUnloadableLatestSnapshotFallsBackToTheOneBeforeAndItsJournals() throws Exception {
        Path live = tmp.resolve("live");
        Path image = tmp.resolve("image");
        DurableRun.SnapshotsAndJournals run = DurableRun.SnapshotsAndJournals.train(live, image);
        SnapshotInfo second = run.second();
        SnapshotInfo third = run.third();
        SnapshotResumeTest.State expected = run.expected();
        damage(image.resolve(third.getPath()), "undeclared-counter");
        try (Warnings warnings = new Warnings();
             SocketServer s = start(image, List.of("latest"));
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + s.port())) {
            expected.assertSame(SnapshotResumeTest.State.of(client, "m"), "snapshot 2 + journals 2 and 3");
            assertEquals(1, warnings.matching("falling back to " + second.getId()).size(),
                    warnings.records.stream().map(LogRecord::getMessage).toList().toString());
            assertTrue(warnings.matching("not restored").isEmpty());
        }
    }
}
