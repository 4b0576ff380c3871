package dev.optsidecar.server.snapshot;

import com.fasterxml.jackson.databind.JsonNode;
import dev.optsidecar.proto.v1.SnapshotInfo;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.zip.CRC32C;

import static dev.optsidecar.server.snapshot.SnapshotFixtures.B;
import static dev.optsidecar.server.snapshot.SnapshotFixtures.JSON;
import static dev.optsidecar.server.snapshot.SnapshotFixtures.M;
import static dev.optsidecar.server.snapshot.SnapshotFixtures.STEP;
import static dev.optsidecar.server.snapshot.SnapshotFixtures.V;
import static dev.optsidecar.server.snapshot.SnapshotFixtures.W;
import static dev.optsidecar.server.snapshot.SnapshotFixtures.entries;
import static dev.optsidecar.server.snapshot.SnapshotFixtures.files;
import static dev.optsidecar.server.snapshot.SnapshotFixtures.ids;
import static dev.optsidecar.server.snapshot.SnapshotFixtures.meta;
import static dev.optsidecar.server.snapshot.SnapshotFixtures.snapshot;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Staging and committing: ids, the manifest, cleanup after failures, concurrent writers. */
class SnapshotWriterTest {
    @TempDir
    Path root;

    @Test
    void roundTrip() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 3);
        Pending p = store.stage("m", "register", 7, meta("m"), files(1));
        assertEquals("000001", p.id());
        assertEquals("m", p.model());
        assertEquals(7, p.version());
        assertTrue(Files.isDirectory(store.modelDir("m").resolve(".tmp-000001")));
        assertEquals(List.of(), store.list("m"), "a staged snapshot is not listed");

        SnapshotInfo info = store.commit(p);
        assertEquals("m", info.getModel());
        assertEquals("000001", info.getId());
        assertEquals(7, info.getVersion());
        assertEquals("register", info.getTrigger());
        assertEquals("m/000001", info.getPath());
        assertTrue(info.getValid());
        Path dir = root.resolve(info.getPath());
        assertEquals(Set.of("weights.safetensors", "state.safetensors", "manifest.json", "manifest.crc32c"), entries(dir));
        long onDisk = 0;
        for (String f : entries(dir)) {
            onDisk += Files.size(dir.resolve(f));
        }
        assertEquals(onDisk, info.getBytes());
        assertEquals(Set.of("000001"), entries(store.modelDir("m")), "the temporary directory is gone");
        assertEquals(List.of(info), store.list("m"), "list verifies to the same info");

        Snapshot s = store.open("m", "000001");
        assertEquals(info, s.info());
        assertEquals(meta("m"), s.modelMeta());
        assertEquals("register", s.trigger());
        assertEquals(7, s.version());
        assertEquals(List.of("weights.safetensors", "state.safetensors"), s.fileNames());
        assertNull(s.file("optimizer.safetensors"));
        try (SafetensorsFile w = s.file("weights.safetensors"); SafetensorsFile st = s.file("state.safetensors")) {
            assertEquals(Map.of("kind", "weights"), w.metadata());
            Tensors.Collected wv = new Tensors.Collected(w, "w");
            Tensors.assertBitExact(W, wv.values);
            assertEquals(2, wv.chunkBytes.size());
            Tensors.assertBitExact(B, new Tensors.Collected(w, "b").values);
            Tensors.assertBitExact(M, new Tensors.Collected(st, "w.exp_avg").values);
            Tensors.assertBitExact(V, new Tensors.Collected(st, "w.exp_avg_sq").values);
            Tensors.assertBitExact(STEP, new Tensors.Collected(st, "step").values);
            assertArrayEquals(new long[0], st.tensors().get("step").shape());
        }
    }

    @Test
    void manifestDescribesEveryFileAndIsChecksummed() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 3);
        SnapshotInfo info = snapshot(store, "m", 42);
        Path dir = root.resolve(info.getPath());
        byte[] json = Files.readAllBytes(dir.resolve("manifest.json"));
        CRC32C crc = new CRC32C();
        crc.update(json);
        assertEquals(String.format("%08x%n", crc.getValue()),
                Files.readString(dir.resolve("manifest.crc32c"), StandardCharsets.US_ASCII));
        String text = new String(json, StandardCharsets.UTF_8);
        assertTrue(text.contains("\n  \"format\""), "pretty-printed: " + text);
        JsonNode m = JSON.readTree(json);
        assertEquals("optsidecar-snapshot", m.get("format").asText());
        assertEquals(2, m.get("format_version").asInt());
        assertEquals("m", m.get("model").asText());
        assertEquals("000001", m.get("id").asText());
        assertEquals(42, m.get("version").asLong());
        assertEquals("rpc", m.get("trigger").asText());
        assertEquals(info.getCreatedUnixMillis(), m.get("created_unix_millis").asLong());
        assertTrue(Math.abs(System.currentTimeMillis() - info.getCreatedUnixMillis()) < 600_000);
        assertEquals(meta("m"), m.get("model_meta"));
        List<String> names = new ArrayList<>();
        m.get("files").fieldNames().forEachRemaining(names::add);
        assertEquals(List.of("weights.safetensors", "state.safetensors"), names);
        for (String name : names) {
            JsonNode f = m.get("files").get(name);
            Path p = dir.resolve(name);
            assertEquals(Files.size(p), f.get("bytes").asLong());
            CRC32C fc = new CRC32C();
            fc.update(Files.readAllBytes(p));
            assertEquals(String.format("%08x", fc.getValue()), f.get("crc32c").asText());
        }
        assertEquals(2, m.get("files").get("weights.safetensors").get("tensors").asInt());
        assertEquals(3, m.get("files").get("state.safetensors").get("tensors").asInt());
    }

    @Test
    void aCommitLeavesOtherStagedSnapshotsAlone() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 3);
        Pending first = store.stage("m", "steps", 1, meta("m"), files(1));
        Pending second = store.stage("m", "steps", 2, meta("m"), files(2));
        assertEquals("000002", second.id());
        store.commit(second);
        assertTrue(Files.isDirectory(store.modelDir("m").resolve(".tmp-000001")));
        store.commit(first);
        assertEquals(List.of("000001", "000002"), ids(store.list("m")));
        assertTrue(store.list("m").stream().allMatch(SnapshotInfo::getValid));
    }

    @Test
    void abortAndFailuresNeverReuseAnId() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 3);
        Pending p = store.stage("m", "rpc", 1, meta("m"), files(1));
        store.abort(p);
        store.abort(p);
        assertFalse(Files.exists(store.modelDir("m").resolve(".tmp-000001")));
        assertThrows(IllegalStateException.class, () -> store.commit(p));

        TensorOut broken = new TensorOut("x", new long[] {10}, (offset, count, dst) -> {
            throw new IllegalStateException("model went away");
        });
        assertThrows(IllegalStateException.class,
                () -> store.stage("m", "rpc", 1, meta("m"), List.of(new FileOut("a.safetensors", Map.of(), List.of(broken)))));
        assertEquals(Set.of(), entries(store.modelDir("m")), "the failed stage cleaned up");

        SnapshotInfo info = snapshot(store, "m", 2);
        assertEquals("000003", info.getId());
        Pending committed = store.stage("m", "rpc", 3, meta("m"), files(3));
        store.commit(committed);
        assertThrows(IllegalStateException.class, () -> store.commit(committed));
        store.abort(committed);
        assertTrue(store.list("m").stream().allMatch(SnapshotInfo::getValid));

        // A later store on the same root continues the sequence.
        SnapshotStore again = new SnapshotStore(root, 3);
        assertEquals("000005", snapshot(again, "m", 4).getId());
        assertEquals(List.of("000003", "000004", "000005"), ids(again.list("m")));
    }

    @Test
    void aFailedCommitCleansUpAndLosesOnlyThatSnapshot() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 3);
        snapshot(store, "m", 1);
        Pending p = store.stage("m", "rpc", 2, meta("m"), files(2));
        Files.delete(store.modelDir("m").resolve(".tmp-" + p.id()).resolve("state.safetensors"));
        assertThrows(NoSuchFileException.class, () -> store.commit(p));
        assertEquals(Set.of("000001"), entries(store.modelDir("m")));
        store.abort(p);
        assertThrows(IllegalStateException.class, () -> store.commit(p));
        assertEquals("000003", snapshot(store, "m", 3).getId());
        assertEquals(List.of("000001", "000003"), ids(store.list("m")));
    }

    @Test
    void concurrentSnapshotsGetDistinctIdsAndStayValid() throws Exception {
        SnapshotStore store = new SnapshotStore(root, 4);
        int threads = 4;
        int each = 3;
        java.util.concurrent.ExecutorService pool = java.util.concurrent.Executors.newFixedThreadPool(threads);
        try {
            List<java.util.concurrent.Future<List<String>>> futures = new ArrayList<>();
            for (int t = 0; t < threads; t++) {
                futures.add(pool.submit(() -> {
                    List<String> got = new ArrayList<>();
                    for (int i = 0; i < each; i++) {
                        Pending p = store.stage("shared", "steps", i, meta("shared"), files(i));
                        got.add(store.commit(p).getId());
                    }
                    return got;
                }));
            }
            Set<String> all = new TreeSet<>();
            for (java.util.concurrent.Future<List<String>> f : futures) {
                all.addAll(f.get());
            }
            assertEquals(threads * each, all.size(), "no id issued twice");
        } finally {
            pool.shutdownNow();
        }
        List<SnapshotInfo> kept = store.list("shared");
        assertEquals(4, kept.size());
        assertTrue(kept.stream().allMatch(SnapshotInfo::getValid));
        assertEquals(List.of("000009", "000010", "000011", "000012"), ids(kept));
        assertEquals(Set.of("000009", "000010", "000011", "000012"), entries(store.modelDir("shared")));
    }

    @Test
    void stageRejectsBadFileNames() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 3);
        for (String name : List.of("../x", "a/b", ".hidden", "manifest.json", "manifest.crc32c", "")) {
            FileOut f = new FileOut(name, Map.of(), List.of(Tensors.of("b", B, 17)));
            assertThrows(IllegalArgumentException.class, () -> store.stage("m", "rpc", 1, null, List.of(f)), name);
        }
        FileOut f = new FileOut("a.safetensors", Map.of(), List.of());
        assertThrows(IllegalArgumentException.class, () -> store.stage("m", "rpc", 1, null, List.of(f, f)));
        assertThrows(IllegalArgumentException.class, () -> store.stage("", "rpc", 1, null, List.of(f)));
        assertThrows(IllegalArgumentException.class, () -> new SnapshotStore(root, 0));
    }

    @Test
    void idsIncreaseAndSurviveANewStore() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 10);
        assertEquals("000001", snapshot(store, "a", 1).getId());
        assertEquals("000002", snapshot(store, "a", 2).getId());
        assertEquals("000001", snapshot(store, "b", 1).getId(), "ids are per model");
        SnapshotStore reopened = new SnapshotStore(root.resolve(".").resolve("x").resolve(".."), 10);
        assertEquals(root.toAbsolutePath().normalize(), reopened.root());
        assertEquals(List.of("000001", "000002"), ids(reopened.list("a")));
        assertEquals("000003", snapshot(reopened, "a", 3).getId());
    }
}
