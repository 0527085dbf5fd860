"""Building blocks shared by every model: embeddings, encoders, MLPs, batched experts, gates, towers.

Shape legend: every shape in the docstrings and shape comments of ``mose`` and ``data_prep`` uses
these letters, and no letter means anything else.

    B  rows of a batch: events (per-event layout) or stream windows (per-stream layout)
    S  steps of a stream window
    M  scored events of a batch: ``B`` per event, the ``mask``-ed steps of the windows per stream
    N  events of a whole split, file or candidate set (what metrics and predictions gather)
    T  tasks;  L  the binary tasks (the labels a history event or the previous step carries)
    E  experts
    G  parallel groups of one batched block (the experts, tasks or gates of ``GroupedLinear``,
       ``GroupedMLP``, ``GroupedLSTM``, ``SoftmaxGates``)
    K  history length (a user's events before the scored one)
    D  input / embedding width;  H  hidden or output width of a block
    C  categorical context features;  F  numeric features
    P  personalization-code columns (POSO)
    R  cohort columns;  V  cohort values, of all cohort columns together
    U  users
    W  stream windows (chunks) of a prepared dataset

A suffix tells two sizes of one kind apart (``Dq`` / ``Dt`` query / token width, ``Hb`` / ``He``
bottom / expert width, ``Cb`` the bias tower's categorical columns, ``Td`` / ``Tp`` the tasks declared
``after`` a parent / the parents); lower-case names are
constructor arguments or locals (``in_dim``, ``hidden[-1]``, ``n_values``); ``*`` and ``...`` are
any leading dims; ``[S,]`` a dim only per-stream tensors have.
"""
