package dev.optsidecar.server.model;

import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.FiguresRequest;
import dev.optsidecar.proto.v1.FiguresResponse;
import dev.optsidecar.proto.v1.LogFiguresRequest;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.VersionFigures;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.TestData;
import io.grpc.Status;
import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;

import static dev.optsidecar.server.StatusAssertions.assertStatus;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Figures: each version's step figures as its StepResult gave them, with the figures its trainers reported. */
class FiguresTest {
    private static ModelSpec spec(String name, int size) {
        ModelSpec s = TestData.spec(name, "RAdamScheduleFree", TestData.hp("lr", 0.02), size).build();
        return s.toBuilder().setOptimizer(s.getOptimizer().toBuilder().setReportUpdateNorm(true)).build();
    }

    @Test
    void eachVersionKeepsItsStepFiguresAndTheTrainersFigures() throws Exception {
        try (SidecarFixture f = SidecarFixture.inProcess().start()) {
            f.client().register(spec("f", 50), TestData.data(TestData.random(50, 1)));
            List<StepResult> results = new ArrayList<>();
            try (Trainer trainer = f.client().trainer("f", "t")) {
                float[][] weights = {new float[50]};
                for (int t = 1; t <= 4; t++) {
                    Trainer.StepOptions options = new Trainer.StepOptions().figure("loss", 10.0 / t);
                    if (t == 2) {
                        trainer.log(Map.of("accuracy", 0.5, "loss", 99.0)); // the step's own loss wins
                    }
                    results.add(trainer.step(TestData.data(TestData.random(50, 10 + t)), TestData.data(weights[0]),
                            options));
                }
            }
            List<VersionFigures> figures = f.client().figures("f", 0);
            assertEquals(4, figures.size());
            double time = 0;
            for (int i = 0; i < 4; i++) {
                VersionFigures v = figures.get(i);
                StepResult r = results.get(i);
                assertEquals(r.getVersion(), v.getVersion());
                assertEquals(r.getGradNorm(), v.getGradNorm());
                assertEquals(r.getUpdateNorm(), v.getUpdateNorm());
                assertEquals(r.getStaleness(), v.getStaleness());
                assertEquals(r.getClipCoefficient(), v.getClipCoefficient());
                assertEquals(r.getGroups(0).getLr(), v.getGroups(0).getLr());
                assertEquals(r.getGroups(0).getEffectiveLr(), v.getGroups(0).getEffectiveLr());
                assertEquals(r.getGroups(0).getAveragingWeight(), v.getGroups(0).getAveragingWeight());
                assertEquals(1, v.getContributions());
                assertEquals(10.0 / (i + 1), v.getFiguresOrThrow("loss"));
                assertTrue(v.getStepSeconds() >= 0 && v.getTime() >= time, v.toString());
                time = v.getTime();
            }
            assertEquals(0.5, figures.get(1).getFiguresOrThrow("accuracy"));
            assertFalse(figures.get(2).containsFigures("accuracy"), "logged figures go with one step only");

            // Without a step: they join the current version, as a mean with what is there.
            assertEquals(4, f.client().logFigures("f", Map.of("loss", 3.5, "eval_accuracy", 0.75)));
            VersionFigures last = f.client().figures("f", 4).get(0);
            assertEquals((10.0 / 4 + 3.5) / 2, last.getFiguresOrThrow("loss"));
            assertEquals(0.75, last.getFiguresOrThrow("eval_accuracy"));

            FiguresResponse page = f.blocking().figures(FiguresRequest.newBuilder().setModel("f").setMaxVersions(3).build());
            assertEquals(3, page.getVersionsCount());
            assertEquals(4, page.getNextFromVersion());
        }
    }

    @Test
    void figuresBeforeAnyStepAreVersionZeros() throws Exception {
        try (SidecarFixture f = SidecarFixture.inProcess().start()) {
            f.client().register(spec("z", 3), TestData.data(TestData.random(3, 1)));
            assertEquals(0, f.client().logFigures("z", Map.of("baseline_loss", 2.0)));
            List<VersionFigures> figures = f.client().figures("z", 0);
            assertEquals(1, figures.size());
            assertEquals(0, figures.get(0).getVersion());
            assertEquals(2.0, figures.get(0).getFiguresOrThrow("baseline_loss"));
        }
    }

    @Test
    void syncContributorsFiguresAreAveraged() throws Exception {
        try (SidecarFixture f = SidecarFixture.inProcess().start()) {
            f.client().register(TestData.spec("s", "Adam", TestData.hp("lr", 0.01), 8)
                    .setCoordination(TestData.sync(2, 0, 0)).build(), TestData.data(TestData.random(8, 1)));
            List<CompletableFuture<StepResult>> steps = new ArrayList<>();
            for (String id : List.of("a", "b")) {
                double loss = id.equals("a") ? 1.0 : 3.0;
                steps.add(CompletableFuture.supplyAsync(() -> {
                    try (Trainer trainer = f.client().trainer("s", id)) {
                        return trainer.step(TestData.data(TestData.random(8, id.hashCode())),
                                TestData.data(new float[8]), new Trainer.StepOptions().figure("loss", loss));
                    }
                }));
            }
            StepResult result = steps.get(0).join();
            assertEquals(1, steps.get(1).join().getVersion());
            VersionFigures v = f.client().figures("s", 0).get(0);
            assertEquals(1, v.getVersion());
            assertEquals(2, v.getContributions());
            assertEquals(result.getGradNorm(), v.getGradNorm());
            assertEquals(2.0, v.getFiguresOrThrow("loss"));
        }
    }

    @Test
    void badFiguresAreRefusedNamingTheFieldAndChangeNothing() throws Exception {
        try (SidecarFixture f = SidecarFixture.inProcess().start()) {
            f.client().register(spec("b", 4), TestData.data(TestData.random(4, 1)));
            Map<String, Double> tooMany = new HashMap<>();
            for (int i = 0; i <= ClientFigures.MAX_PER_STEP; i++) {
                tooMany.put("f" + i, 1.0);
            }
            List<Map<String, Double>> bad = List.of(Map.of("loss", Double.NaN), Map.of("loss", Double.POSITIVE_INFINITY),
                    Map.of("x".repeat(ClientFigures.MAX_NAME_LENGTH + 1), 1.0), Map.of("", 1.0),
                    Map.of("two words", 1.0), tooMany);
            for (Map<String, Double> figures : bad) {
                try (Trainer trainer = f.client().trainer("b", "t")) {
                    Trainer.StepOptions options = new Trainer.StepOptions();
                    figures.forEach(options::figure);
                    assertStatus(Status.Code.INVALID_ARGUMENT, () -> trainer.step(TestData.data(TestData.random(4, 2)),
                            TestData.data(new float[4]), options), "commit.figures");
                }
                assertStatus(Status.Code.INVALID_ARGUMENT, () -> f.blocking().logFigures(
                        LogFiguresRequest.newBuilder().setModel("b").putAllFigures(figures).build()), "figures: ");
            }
            assertEquals(0, f.describe("b").getVersion());
            assertEquals(List.of(), f.client().figures("b", 0));
        }
    }

    @Test
    void keptAsLongAsHistoryAndCountedInMemory() throws Exception {
        try (SidecarFixture f = SidecarFixture.inProcess().limits(Limits.DEFAULTS.withHistory(5, 64L << 20)).start()) {
            long empty = f.server().registry().reservedBytes();
            f.client().register(spec("k", 6), TestData.data(TestData.random(6, 1)));
            long registered = f.server().registry().reservedBytes();
            Model m = f.model("k");
            try (Trainer trainer = f.client().trainer("k", "t")) {
                for (int t = 1; t <= 12; t++) {
                    trainer.step(TestData.data(TestData.random(6, t)), TestData.data(new float[6]),
                            new Trainer.StepOptions().figure("loss", t));
                }
            }
            List<VersionFigures> kept = f.client().figures("k", 0);
            assertEquals(List.of(8L, 9L, 10L, 11L, 12L), kept.stream().map(VersionFigures::getVersion).toList());
            long figureBytes = m.figureHistory().bytes();
            assertTrue(figureBytes > 0);
            SidecarFixture.awaitTrue("the trainer's buffers to be released", () ->
                    f.server().registry().reservedBytes() == registered + m.recordBytes());
            assertTrue(m.recordBytes() >= figureBytes);
            f.client().delete("k");
            assertEquals(empty, f.server().registry().reservedBytes());
        }
    }
}
