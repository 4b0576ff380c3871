package dev.optsidecar.server.durability;

import dev.optsidecar.server.TestData;
import dev.optsidecar.server.TrainingConfigs;
import dev.optsidecar.server.Twins;
import dev.optsidecar.server.SocketServer;
import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.SnapshotInfo;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.snapshot.SnapshotStore;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * Snapshots resume exactly: for every algorithm and wrapper, a model restored from a snapshot in a
 * fresh server continues bit for bit like the uninterrupted run, and a model restored from a
 * crash image (the state directory as it was mid-run) replays its journal to the exact state of
 * its last acknowledged step.
 */
public class SnapshotResumeTest {
    static final long[] SIZES = TrainingConfigs.SIZES;
    static final int SNAPSHOT_AFTER = 6;
    static final int STEPS = 11;

    @TempDir
    Path tmp;

    public static SocketServer start(Path dir, List<String> restore) throws IOException {
        return SocketServer.start("127.0.0.1", 0, 2, 1L << 30,
                new Persistence.Options(dir, 3, StepJournal.Sync.WRITE, 0, null, false), restore);
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("dev.optsidecar.server.TrainingConfigs#all")
    void snapshotAndJournalResumeBitForBit(TrainingConfigs.Config c) throws Exception {
        Path live = tmp.resolve("live");
        Path crashImage = tmp.resolve("crash-image");
        String name = "resume-" + c.name();
        ModelSpec spec = TrainingConfigs.spec(c, name);
        State uninterrupted;
        SnapshotInfo snap;
        try (SocketServer a = start(live, List.of());
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + a.port())) {
            client.register(spec, data(initial()));
            try (Trainer t = client.trainer(name, "trainer")) {
                steps(t, 1, SNAPSHOT_AFTER);
                snap = client.snapshot(name);
                steps(t, SNAPSHOT_AFTER + 1, STEPS);
            }
            a.server().persistence().awaitBackgroundSnapshots();
            copyTree(live, crashImage); // what the disk holds if the server dies now
            uninterrupted = State.of(client, name);
        }
        assertEquals(SNAPSHOT_AFTER, snap.getVersion());

        // The snapshot by id, in a fresh server: exactly version 6, then the same steps.
        try (SocketServer b = start(live, List.of(name + "@" + snap.getId()));
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + b.port())) {
            assertEquals(SNAPSHOT_AFTER, client.describe(name).getVersion());
            try (Trainer t = client.trainer(name, "another-trainer")) {
                steps(t, SNAPSHOT_AFTER + 1, STEPS);
            }
            uninterrupted.assertSame(State.of(client, name), "resumed from snapshot " + snap.getId());
        }

        // The crash image: the latest snapshot (after step 6) plus the journaled steps 7..11, replayed.
        List<SnapshotInfo> saved = new SnapshotStore(crashImage, 3).list(name);
        assertEquals(SNAPSHOT_AFTER, saved.get(saved.size() - 1).getVersion());
        try (SocketServer r = start(crashImage, List.of("latest"));
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + r.port())) {
            State replayed = State.of(client, name);
            uninterrupted.assertSame(replayed, "restored from the crash image");
            assertEquals(uninterrupted.info.getState().getClientsList(), replayed.info.getState().getClientsList(),
                    "the clients' sequence numbers come back with the journal");
        }
    }

    /** Weights in every view, every state slot and the counters. */
    public record State(ModelInfo info, Map<String, List<float[]>> views) {
        public static State of(OptSidecarClient client, String model) {
            ModelInfo info = client.describe(model);
            Map<String, List<float[]>> views = new LinkedHashMap<>();
            for (View v : info.getViewsList()) {
                views.put(v.toString(), pull(client, model, v, info));
            }
            info.getTensorsList().stream().flatMap(t -> t.getSlotsList().stream()).distinct().forEach(slot ->
                    views.put("slot " + slot, pull(client, model,
                            View.newBuilder().setKind(ViewKind.VIEW_SLOT).setSlot(slot).build(), info)));
            return new State(info, views);
        }

        private static List<float[]> pull(OptSidecarClient client, String model, View v, ModelInfo info) {
            List<float[]> out = blanks();
            List<Integer> having = new ArrayList<>();
            List<TensorData> into = new ArrayList<>();
            for (int i = 0; i < info.getTensorsCount(); i++) {
                boolean has = v.getKind() != ViewKind.VIEW_SLOT || info.getTensors(i).getSlotsList().contains(v.getSlot());
                into.add(has ? TensorData.of(out.get(i)) : null);
                if (has) {
                    having.add(i);
                }
            }
            client.pull(model, v, into, having);
            return out;
        }

        public void assertSame(State other, String what) {
            assertEquals(Twins.withoutClients(info).getState(), Twins.withoutClients(other.info).getState(),
                    what + ": counters");
            assertEquals(views.keySet(), other.views.keySet(), what + ": views");
            for (String v : views.keySet()) {
                for (int t = 0; t < SIZES.length; t++) {
                    assertArrayEquals(views.get(v).get(t), other.views.get(v).get(t), what + ": " + v + " tensor " + t);
                }
            }
        }
    }

    public static void steps(Trainer t, int from, int to) {
        List<float[]> out = blanks();
        for (int step = from; step <= to; step++) {
            t.step(data(grads(step)), data(out));
        }
    }

    public static List<float[]> initial() {
        List<float[]> init = new ArrayList<>();
        for (int i = 0; i < SIZES.length; i++) {
            init.add(TestData.random((int) SIZES[i], 7 + i));
        }
        return init;
    }

    public static List<float[]> grads(int step) {
        List<float[]> g = new ArrayList<>();
        for (int i = 0; i < SIZES.length; i++) {
            g.add(TestData.random((int) SIZES[i], 1000L * step + i));
        }
        return g;
    }

    public static List<float[]> blanks() {
        List<float[]> out = new ArrayList<>();
        for (long n : SIZES) {
            out.add(new float[(int) n]);
        }
        return out;
    }

    public static List<TensorData> data(List<float[]> arrays) {
        return arrays.stream().map(TensorData::of).toList();
    }

    public static void copyTree(Path from, Path to) throws IOException {
        try (Stream<Path> files = Files.walk(from)) {
            for (Path p : (Iterable<Path>) files::iterator) {
                Path target = to.resolve(from.relativize(p).toString());
                if (Files.isDirectory(p)) {
                    Files.createDirectories(target);
                } else {
                    Files.copy(p, target, StandardCopyOption.COPY_ATTRIBUTES);
                }
            }
        }
    }
}
