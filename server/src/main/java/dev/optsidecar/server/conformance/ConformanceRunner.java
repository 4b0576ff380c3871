package dev.optsidecar.server.conformance;

import com.fasterxml.jackson.databind.JsonNode;
import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.GroupStep;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;

import java.io.IOException;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.UUID;
import java.util.stream.Stream;

/**
 * Replays reference case files through a server over the real gRPC path, with the Java client:
 * registers the case's model, feeds the recorded gradients step by step, and compares every
 * recorded value within the tolerance the case file carries.
 */
public final class ConformanceRunner {
    private final OptSidecarClient client;
    private final PrintStream out;

    public ConformanceRunner(OptSidecarClient client, PrintStream out) {
        this.client = client;
        this.out = out;
    }

    /** Runs every case in {@code dir} (index.json is a listing, not a case) and prints a line each. */
    public Summary runAll(Path dir) throws IOException {
        List<Path> files;
        try (Stream<Path> list = Files.list(dir)) {
            files = list.filter(p -> p.getFileName().toString().endsWith(".json"))
                    .filter(p -> !p.getFileName().toString().equals("index.json"))
                    .sorted()
                    .toList();
        }
        List<CaseResult> results = new ArrayList<>();
        dev.optsidecar.server.observe.Progress progress = dev.optsidecar.server.observe.Progress.start(
                java.util.logging.Logger.getLogger(ConformanceRunner.class.getName()), "conformance", null,
                "conformance run of " + dir, "cases", files.size());
        for (Path file : files) {
            CaseResult r = runFile(file);
            out.println(r.line());
            results.add(r);
            progress.advance(1);
        }
        progress.finish();
        Summary summary = new Summary(results);
        if (summary.skipped() > 0) {
            out.println("skipped: " + summary.skipped());
        }
        out.println("conformance: " + summary.passed() + " passed, " + summary.failed() + " failed");
        return summary;
    }

    CaseResult runFile(Path file) {
        String fallbackName = file.getFileName().toString().replaceFirst("\\.json$", "");
        ReferenceCase c;
        try {
            c = ReferenceCase.read(file);
        } catch (IOException | RuntimeException e) {
            return new CaseResult(fallbackName, CaseResult.Outcome.FAIL, Double.POSITIVE_INFINITY,
                    "cannot read case: " + e.getMessage());
        }
        String model = "conformance-" + c.name + "-" + UUID.randomUUID();
        try {
            return run(c, model);
        } catch (StatusRuntimeException e) {
            if (e.getStatus().getCode() == Status.Code.UNIMPLEMENTED) {
                return new CaseResult(c.name, CaseResult.Outcome.SKIP, 0, "not implemented: "
                        + e.getStatus().getDescription());
            }
            return new CaseResult(c.name, CaseResult.Outcome.FAIL, Double.POSITIVE_INFINITY,
                    "server error " + e.getStatus().getCode() + ": " + e.getStatus().getDescription());
        } catch (IOException | RuntimeException e) {
            return new CaseResult(c.name, CaseResult.Outcome.FAIL, Double.POSITIVE_INFINITY, e.toString());
        } finally {
            try {
                client.delete(model);
            } catch (StatusRuntimeException ignored) {
                // never registered
            }
        }
    }

    /**
     * Registers the case's model (a resume case restores its checkpoint through the API), replays
     * the recorded gradients and checks, at every step, the train weights, the eval view, the lr
     * and the recorded group scalars; at the end, the optimizer state.
     */
    private CaseResult run(ReferenceCase c, String model) throws IOException {
        List<float[]> start = c.startingParams();
        List<TensorData> startData = start.stream().map(TensorData::of).toList();
        int resumeAfter = c.resumeAfter();
        if (resumeAfter == 0) {
            client.register(c.spec(model), startData);
        } else {
            ModelSpec spec = c.spec(model);
            spec = spec.toBuilder().setState(c.checkpointState("default")).build();
            client.register(spec, startData, c.checkpointBuffers());
        }
        View evalView = c.evalView();
        Comparison cmp = new Comparison(c.atol, c.rtol, c.scalarRtol);
        List<String> names = c.paramNames();
        List<float[]> train = blanks(start);
        List<float[]> eval = blanks(start);
        try (Trainer trainer = client.trainer(model, "conformance")) {
            for (JsonNode step : c.steps()) {
                int t = step.path("t").asInt();
                if (t <= resumeAfter) {
                    continue;
                }
                List<TensorData> grads = ReferenceCase.decodeAll(step.path("grads")).stream().map(TensorData::of).toList();
                StepResult result = trainer.step(grads, train.stream().map(TensorData::of).toList());
                String at = "step " + t;
                if (result.getVersion() != t) {
                    cmp.fail(at + ": server reports version " + result.getVersion());
                }
                GroupStep group = result.getGroups(0);
                cmp.scalar(at + " lr", group.getLr(), step.path("lr").asDouble());
                JsonNode expectedGroup = step.path("group");
                if (expectedGroup.isObject()) {
                    cmp.scalar(at + " scheduled_lr", group.getEffectiveLr(),
                            expectedGroup.path(ReferenceCase.SCHEDULED_LR).asDouble());
                    cmp.groupScalars(at, group.getScalarsMap(), expectedGroup, c.recordedScalars());
                }
                if (step.has("train")) {
                    cmp.tensors(at + " train", names, train, ReferenceCase.decodeAll(step.path("train")));
                }
                if (step.has("eval")) {
                    if (evalView == null) {
                        cmp.fail(at + ": the case records an eval view of unknown kind " + c.root.path("eval_view"));
                        continue;
                    }
                    OptSidecarClient.Weights w = client.pull(model, evalView, eval.stream().map(TensorData::of).toList());
                    if (!w.view().equals(evalView) || w.version() != t) {
                        cmp.fail(at + ": eval pull labelled " + w.view().getKind() + " version " + w.version());
                    }
                    cmp.tensors(at + " " + evalView.getKind().name().substring(5).toLowerCase(Locale.ROOT), names, eval,
                            ReferenceCase.decodeAll(step.path("eval")));
                }
            }
        }
        new FinalState(client, model, c, cmp).check();
        if (cmp.passed()) {
            return new CaseResult(c.name, CaseResult.Outcome.PASS, cmp.worst(), "at " + cmp.worstWhere());
        }
        return new CaseResult(c.name, CaseResult.Outcome.FAIL, cmp.worst(), cmp.firstFailure());
    }

    private static List<float[]> blanks(List<float[]> like) {
        List<float[]> out = new ArrayList<>();
        for (float[] p : like) {
            out.add(new float[p.length]);
        }
        return out;
    }

    /** Counts of a run. */
    public record Summary(List<CaseResult> results) {
        public long passed() {
            return count(CaseResult.Outcome.PASS);
        }

        public long failed() {
            return count(CaseResult.Outcome.FAIL);
        }

        public long skipped() {
            return count(CaseResult.Outcome.SKIP);
        }

        /** Names of the cases with the given outcome (PASS, FAIL or SKIP). */
        public List<String> names(String outcome) {
            return results.stream().filter(r -> r.outcome().name().equals(outcome)).map(CaseResult::name).toList();
        }

        private long count(CaseResult.Outcome o) {
            return results.stream().filter(r -> r.outcome() == o).count();
        }
    }
}
