package dev.optsidecar.server.model;

import com.google.protobuf.CodedOutputStream;
import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.HistoryRequest;
import dev.optsidecar.proto.v1.HistoryResponse;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.TensorSpec;
import dev.optsidecar.proto.v1.VersionContributions;
import dev.optsidecar.server.SidecarFixture;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.List;

import static dev.optsidecar.server.TestData.struct;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * History many times larger than a client's default 4 MiB receive limit is read in pages, each
 * bounded in versions and bytes, and the clients read it whole by following them. Long client ids
 * make each version large, so a few hundred versions are enough.
 */
class HistoryPagingTest {
    private static final String MODEL = "long-history";
    private static final int CLIENTS = 8;
    private static final int ROUNDS = 20;
    private static final int ID_BYTES = 60_000;
    /** One client id alone is larger than a page's byte bound. */
    private static final int HUGE_ID_BYTES = History.PAGE_BYTES + 100_000;

    private static SidecarFixture f;
    /** What each step's result said its version combined: the reference History must match. */
    private static final List<VersionContributions> expected = new ArrayList<>();

    @BeforeAll
    static void stepWithLongClientIds() throws Exception {
        f = SidecarFixture.inProcess().limits(Limits.DEFAULTS.withMaxClientIdBytes(2 * HUGE_ID_BYTES)).start();
        f.client().register(ModelSpec.newBuilder().setName(MODEL)
                .addTensors(TensorSpec.newBuilder().setName("w").addShape(4))
                .setOptimizer(OptimizerConfig.newBuilder().setAlgorithm("SGD").setHyperparameters(struct("lr", 0.1)))
                .build(), List.of(TensorData.of(new float[4])));
        List<Trainer> trainers = new ArrayList<>();
        for (int i = 0; i < CLIENTS; i++) {
            trainers.add(f.client().trainer(MODEL, i + "-" + "x".repeat(ID_BYTES)));
        }
        float[][] grads = {{1, 2, 3, 4}};
        float[][] out = {new float[4]};
        for (int round = 0; round < ROUNDS; round++) {
            for (Trainer t : trainers) {
                record(t.step(grads, out));
            }
        }
        trainers.forEach(Trainer::close);
        try (Trainer huge = f.client().trainer(MODEL, "y".repeat(HUGE_ID_BYTES))) {
            record(huge.step(grads, out));
        }
        long total = expected.stream().mapToLong(VersionContributions::getSerializedSize).sum();
        assertTrue(total > 2 * SidecarFixture.CLIENT_MAX_MESSAGE_BYTES, total + " bytes of history");
    }

    private static void record(StepResult r) {
        expected.add(VersionContributions.newBuilder().setVersion(r.getVersion())
                .addAllContributions(r.getContributionsList()).build());
    }

    @AfterAll
    static void stop() {
        f.close();
    }

    private static HistoryResponse page(long from, int maxVersions) {
        return f.blocking().history(HistoryRequest.newBuilder().setModel(MODEL).setFromVersion(from)
                .setMaxVersions(maxVersions).build());
    }

    @Test
    void theJavaClientReadsTheWholeHistoryPageByPage() {
        assertEquals(expected, f.client().history(MODEL, 0));
        assertEquals(expected.subList(100, expected.size()), f.client().history(MODEL, 101));
        try (OptSidecarClient other = f.connect()) {
            assertEquals(expected.get(expected.size() - 1), other.history(MODEL, expected.size()).get(0));
        }
    }

    @Test
    void defaultPagesStopBeforeAMegabyteAndChainWithoutGapsOrOverlap() {
        List<VersionContributions> read = new ArrayList<>();
        List<Integer> pageSizes = new ArrayList<>();
        long from = 0;
        do {
            HistoryResponse p = page(from, 0);
            assertTrue(p.getVersionsCount() >= 1, "an empty page from " + from);
            if (p.getVersionsCount() > 1) {
                assertTrue(p.getSerializedSize() <= History.PAGE_BYTES, p.getSerializedSize() + " bytes");
            }
            // Full: one version more would have passed the byte bound.
            if (p.getNextFromVersion() != 0) {
                assertEquals(p.getVersions(p.getVersionsCount() - 1).getVersion() + 1, p.getNextFromVersion());
                VersionContributions next = expected.get((int) p.getNextFromVersion() - 1);
                assertTrue(p.getSerializedSize() + CodedOutputStream.computeMessageSize(
                        HistoryResponse.VERSIONS_FIELD_NUMBER, next) > History.PAGE_BYTES);
            }
            read.addAll(p.getVersionsList());
            pageSizes.add(p.getVersionsCount());
            from = p.getNextFromVersion();
        } while (from != 0);
        assertEquals(expected, read);
        // 60 kB per version: 17 fit in a megabyte; the huge last version travels alone.
        int perPage = History.PAGE_BYTES / (int) expected.get(0).getSerializedSize();
        List<Integer> want = new ArrayList<>();
        for (int left = CLIENTS * ROUNDS; left > 0; left -= perPage) {
            want.add(Math.min(perPage, left));
        }
        want.add(1);
        assertEquals(want, pageSizes);
    }

    @Test
    void maxVersionsBoundsAPageBelowTheByteBound() {
        HistoryResponse p = page(3, 5);
        assertEquals(expected.subList(2, 7), p.getVersionsList());
        assertEquals(8, p.getNextFromVersion());
        // The version larger than a page's byte bound comes alone, and last.
        HistoryResponse beforeHuge = page(expected.size() - 1, 5);
        assertEquals(expected.subList(expected.size() - 2, expected.size() - 1), beforeHuge.getVersionsList());
        assertEquals(expected.size(), beforeHuge.getNextFromVersion());
        HistoryResponse last = page(expected.size(), 5);
        assertEquals(expected.subList(expected.size() - 1, expected.size()), last.getVersionsList());
        assertEquals(0, last.getNextFromVersion());
        // Past the newest version: nothing, and no next page.
        assertEquals(HistoryResponse.getDefaultInstance(), page(expected.size() + 1, 0));
        // 2^32 − 1 is as good as no count bound: the byte bound still holds.
        assertEquals(page(0, 0), page(0, -1));
    }
}
