package dev.optsidecar.server.api;

import dev.optsidecar.proto.v1.WeightsChunk;
import dev.optsidecar.server.model.ViewReader;
import io.grpc.stub.ServerCallStreamObserver;

import java.util.function.Function;

/**
 * Streams a view's chunks as fast as the transport takes them: it sends while the call is ready
 * and resumes on the next onReady, so the model is never queued in memory. It runs inside the
 * call's serialized callbacks, so it needs no locking of its own.
 */
final class ChunkSender<T> {
    /** Payload bytes per chunk. */
    static final int CHUNK_BYTES = 1 << 20;

    private final ServerCallStreamObserver<T> out;
    private final ViewReader reader;
    private final Function<WeightsChunk, T> wrap;
    private final Runnable onFinished;
    private boolean finished;

    ChunkSender(ServerCallStreamObserver<T> out, ViewReader reader, Function<WeightsChunk, T> wrap,
                Runnable onFinished) {
        this.out = out;
        this.reader = reader;
        this.wrap = wrap;
        this.onFinished = onFinished;
    }

    /** Sends what the transport will take now; calls onFinished once the last chunk is out. */
    void drain() {
        while (!finished && reader.hasNext() && out.isReady()) {
            out.onNext(wrap.apply(reader.next(CHUNK_BYTES)));
        }
        if (!finished && !reader.hasNext()) {
            finished = true;
            reader.close();
            onFinished.run();
        }
    }

    /** Stops sending and releases the model. */
    void cancel() {
        finished = true;
        reader.close();
    }
}
