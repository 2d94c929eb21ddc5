from services.inventory.domain.allocation import (
    BinStock,
    Warehouse,
    natural_key,
    plan_allocation,
    rank_warehouses,
)

BER = Warehouse("BER", "DE", "10115")
MUC = Warehouse("MUC", "DE", "80331")
AMS = Warehouse("AMS", "NL", "1011")


def test_nearest_warehouse_comes_first() -> None:
    ranked = rank_warehouses([AMS, MUC, BER], country="DE", postal_code="80469")
    assert [w.warehouse_id for w in ranked] == ["MUC", "BER", "AMS"]


def test_one_warehouse_that_can_ship_everything_wins_over_a_nearer_split() -> None:
    stock = [
        BinStock("MUC", "A", "1", 5),
        BinStock("BER", "A", "1", 5),
        BinStock("BER", "B", "1", 5),
    ]
    ranked = rank_warehouses([BER, MUC], country="DE", postal_code="80469")
    plan = plan_allocation({"A": 2, "B": 1}, stock, ranked)
    assert plan.complete and plan.warehouses() == ["BER"]


def test_split_across_the_fewest_warehouses() -> None:
    stock = [
        BinStock("AMS", "A", "1", 1),
        BinStock("BER", "A", "1", 3),
        BinStock("MUC", "B", "1", 2),
        BinStock("AMS", "B", "1", 2),
    ]
    plan = plan_allocation({"A": 3, "B": 2}, stock, [BER, MUC, AMS])
    assert plan.complete
    assert plan.warehouses() == ["BER", "MUC"]


def test_nothing_is_reserved_when_the_order_cannot_be_filled() -> None:
    plan = plan_allocation({"A": 4}, [BinStock("BER", "A", "1", 3)], [BER])
    assert not plan.complete
    assert plan.picks == ()
    assert plan.missing == {"A": 1}


def test_bins_are_taken_in_walking_order() -> None:
    stock = [BinStock("BER", "A", "A-10", 5), BinStock("BER", "A", "A-2", 1)]
    plan = plan_allocation({"A": 3}, stock, [BER])
    assert [(p.bin, p.quantity) for p in plan.picks] == [("A-2", 1), ("A-10", 2)]


def test_natural_sort_compares_numbers_as_numbers() -> None:
    assert sorted(["A-10", "A-2", "B-1", "a-3"], key=natural_key) == ["A-2", "a-3", "A-10", "B-1"]


def test_split_finds_two_warehouses_where_a_greedy_choice_would_need_three() -> None:
    near = Warehouse("NEAR", "DE", "80331")  # has a bit of everything: greedy's first pick
    stock = [
        BinStock("NEAR", "A", "1", 1),
        BinStock("NEAR", "B", "1", 1),
        BinStock("BER", "A", "1", 2),
        BinStock("AMS", "B", "1", 2),
    ]
    ranked = rank_warehouses([near, BER, AMS], country="DE", postal_code="80469")
    plan = plan_allocation({"A": 2, "B": 2}, stock, ranked)
    assert plan.complete
    assert plan.warehouses() == ["AMS", "BER"]


def test_a_split_uses_no_warehouse_that_adds_nothing() -> None:
    stock = [
        BinStock("BER", "A", "1", 1),
        BinStock("MUC", "A", "1", 1),
        BinStock("AMS", "C", "1", 5),
    ]
    plan = plan_allocation({"A": 2}, stock, [AMS, BER, MUC])
    assert plan.warehouses() == ["BER", "MUC"]
